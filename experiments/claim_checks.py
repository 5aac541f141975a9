"""The paper's claims at a preset's scale, each decided from a 95% interval (experiments/claim_stats.py).

Every claim reads the experiments' defaults (no variant) on the test split when every result it needs is there
(the test split is read once per claim, after the choices made on the validation split), else on the validation
split; a claim with no result under the protocol is "not run under the protocol".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import attrs

from experiments import claim_stats as cs
from experiments.claim_stats import Estimate, Target, Verdict
from experiments.common import ratio_tag
from experiments.report_curves import ratio_value
from experiments.report_study import Row, best_setting, default_sampler, setting_draws
from experiments.result_files import Run

BySplit = Mapping[str, Mapping[str, Sequence[Run]]]
"""split -> experiment -> the defaults' runs, sorted by seed."""
FID_RATIO = Target("<=", 1.10, 1.05)
"""A joint FID against the single-task FID, same sampler and NFE."""
JOINT = (("image_label", "label"), ("image_caption", "caption"), ("masked_image", "masked image"),
         ("image_representation", "representation"))
BASELINE = Target("<=", 1.10)
"""The single-task FID at BASELINE_NFE against diffusers' best DPMSolverMultistepScheduler setting there."""
BASELINE_NFE = 10
COHERENCE = Target(">=", 0.85)
FIDELITY = Target(">=", 0.90)
NOISE_LIKE = Target("<=", 0.02)
STEER = {"image_representation": ("a representation", Target(">=", 0.50)),
         "image_caption": ("a caption", Target(">=", 0.85))}
"""Images generated given an aggregated value of a test image, in that image's class (conditional fidelity)."""
STEPS = Target("<", 1.0)
"""Steps the masked-image model needs to reach the single-task model's final FID, over the single-task steps."""
HEAD_GAP = Target(">=", -0.02)
"""The label head's accuracy minus the standalone classifier's."""
RESTORATION = Target(">", 0.0)
"""Restored PSNR minus the masked input's, and minus SDEdit's (dB)."""
RESTORATIONS = (("as generated", ""), ("observed pixels pasted back", "_kept"))
MASKED = "masked_image"


@attrs.frozen
class ClaimResult:
    """One claim, decided.

    Attributes:
        claim: what is claimed.
        target: the target, in words.
        split: the split it was read on (None: not run).
        estimate: the deciding statistic (for a claim of several parts: the part that decides).
        seeds: the seed numbers of ``estimate.per_seed``.
        verdict: held / missed / inconclusive / not run under the protocol, with why.
        detail: the parts, the chosen setting, or what is missing.
    """

    claim: str
    target: str
    split: str | None
    estimate: Estimate | None
    seeds: tuple[int, ...]
    verdict: Verdict
    detail: str = ""


def _pct(v: float) -> str:
    return f"{v:.0%}"


def not_run(claim: str, target: str, detail: str) -> ClaimResult:
    """A claim without the results it needs."""
    return ClaimResult(claim, target, None, None, (), cs.verdict(None, FID_RATIO), detail)


def pick_split(by_split: BySplit, experiments: Sequence[str]) -> str | None:
    """"test" when every experiment has results there, else "val" when it does, else None."""
    return next((s for s in ("test", "val") if all(by_split.get(s, {}).get(e) for e in experiments)), None)


def paired(a: Sequence[Run], b: Sequence[Run], key_a: str, key_b: str
           ) -> tuple[list[list[float]], list[list[float]], tuple[int, ...]]:
    """The draws of ``key_a`` in ``a`` and ``key_b`` in ``b`` on the seeds both have them, in seed order."""
    da = {r.seed: d for r in a if (d := r.draws(key_a)) is not None}
    db = {r.seed: d for r in b if (d := r.draws(key_b)) is not None}
    seeds = tuple(sorted(set(da) & set(db)))
    return [da[s] for s in seeds], [db[s] for s in seeds], seeds


def decide(claim: str, target: Target, split: str, est: Estimate, seeds: Sequence[int], detail: str = "",
           unit: Callable[[float], str] = lambda v: f"{v:g}") -> ClaimResult:
    """A claim's result from its estimate."""
    return ClaimResult(claim, target.describe(unit), split, est, tuple(seeds), cs.verdict(est, target), detail)


def ratio_claim(by_split: BySplit, num: str, den: str, key: str, claim: str, target: Target) -> ClaimResult:
    """mean(num's key) / mean(den's key) on their common seeds."""
    split = pick_split(by_split, (num, den))
    if split is not None:
        a, b, seeds = paired(by_split[split][num], by_split[split][den], key, key)
        if seeds:
            return decide(claim, target, split, cs.bootstrap_paired(a, b), seeds)
    return not_run(claim, target.describe(), f"needs `{key}` of {num} and {den} on common seeds")


def metric_claim(by_split: BySplit, experiment: str, key: str, claim: str, target: Target) -> ClaimResult:
    """The mean of one metric of one experiment."""
    split = pick_split(by_split, (experiment,))
    runs = [r for r in by_split.get(split or "", {}).get(experiment, []) if r.draws(key) is not None]
    if not runs:
        return not_run(claim, target.describe(_pct), f"needs `{key}` of {experiment}")
    est = cs.bootstrap_mean([r.draws(key) or [] for r in runs])
    return decide(claim, target, split or "", est, [r.seed for r in runs], unit=_pct)


def _nearest(parts: Sequence[ClaimResult], target: Target) -> int:
    """The part whose interval end lies nearest the target (the one that decides a held claim)."""
    def end(p: ClaimResult) -> float:
        e = p.estimate
        if e is None or e.low is None or e.high is None:
            return -math.inf
        return e.high if target.op in ("<=", "<") else -e.low

    return max(range(len(parts)), key=lambda i: end(parts[i]))


def all_parts(claim: str, target: str, parts: Sequence[ClaimResult], tgt: Target) -> ClaimResult:
    """A claim that holds when every part holds (see claim_stats.combine); its estimate is the deciding part's."""
    verdict, i = cs.combine([p.verdict for p in parts])
    if verdict.status == cs.HELD:
        i = _nearest(parts, tgt)
    detail = "; ".join(f"{p.claim}: {p.verdict.status}" for p in parts)
    d = parts[i]
    return ClaimResult(claim, target, d.split, d.estimate, d.seeds,
                       Verdict(verdict.status, f"{d.claim} decides: {d.verdict.reason}"), detail)


def noise_claim(by_split: BySplit) -> ClaimResult:
    """The noise-like share of every mtd model in every generation mode (every metric named *noise_like*)."""
    claim = f"noise-like share <= {NOISE_LIKE.bound:.0%} for every mtd model in every generation mode"
    experiments = sorted({e for by in by_split.values() for e in by if e != "diffusers_baseline"})
    split = pick_split(by_split, experiments) or next((s for s in ("test", "val") if by_split.get(s)), None)
    parts = []
    for e in experiments if split else ():
        runs = by_split[split or ""].get(e, [])
        for k in sorted({k for r in runs for k in r.data["metrics"] if "noise_like" in k}):
            parts.append(metric_claim({split or "": {e: runs}}, e, k, f"{e} `{k}`", NOISE_LIKE))
    if not parts:
        return not_run(claim, NOISE_LIKE.describe(_pct), "no result reports it")
    return all_parts(claim, NOISE_LIKE.describe(_pct), parts, NOISE_LIKE)


def baseline_claim(study: Sequence[Row]) -> ClaimResult:
    """mtd's single-task FID at BASELINE_NFE against diffusers' best DPMSolverMultistep setting there."""
    claim = (f"single-task FID at {BASELINE_NFE} NFE / diffusers' best DPMSolverMultistepScheduler setting at "
             f"{BASELINE_NFE} NFE (sampler study; the setting chosen on val)")
    dpm = lambda s: s.get("sampler") == "diffusers_dpmpp" and s.get("nfe") == BASELINE_NFE  # noqa: E731
    for split in ("test", "val"):
        ours = setting_draws(study, "single_task", split, default_sampler(BASELINE_NFE))
        best = best_setting(study, "diffusers_baseline", split, dpm)
        if not ours or best is None:
            continue
        mtd: dict[int, list[float]] = {}
        for per_seed in ours.values():  # {"nfe": N} and {"sampler": default, "nfe": N} are one setting
            for seed, d in per_seed.items():
                mtd.setdefault(seed, []).extend(d)
        seeds = tuple(sorted(set(mtd) & set(best[1])))
        if seeds:
            est = cs.bootstrap_paired([mtd[s] for s in seeds], [best[1][s] for s in seeds])
            return decide(claim, BASELINE, split, est, seeds, f"diffusers setting `{best[0]}`")
    return not_run(claim, BASELINE.describe(), f"needs the sampler study's rows of single_task (mtd's default "
                                               f"sampler) and diffusers_baseline (diffusers_dpmpp) at {BASELINE_NFE} "
                                               f"NFE")


def steps_claim(by_split: BySplit) -> ClaimResult:
    """The masked-image steps ratio over the seeds both learning curves have."""
    claim = "masked-image training reaches the single-task final FID in fewer steps (steps ratio)"
    split = pick_split(by_split, ("single_task", MASKED))
    if split is not None:
        single = {r.seed: r for r in by_split[split]["single_task"] if r.data.get("curve")}
        masked = {r.seed: r for r in by_split[split][MASKED] if r.data.get("curve")}
        seeds = tuple(sorted(set(single) & set(masked)))
        if seeds:
            est = cs.bootstrap_seeds(len(seeds), lambda idx: ratio_value([single[seeds[i]] for i in idx],
                                                                         [masked[seeds[i]] for i in idx]))
            if not math.isnan(est.mean):
                never = math.inf in (est.mean, est.high, *est.per_seed)
                return decide(claim, STEPS, split, est, seeds, "inf: the single-task final FID never reached by the "
                                                               "masked-image curve" if never else "")
    return not_run(claim, STEPS.describe(), "needs the learning curves of single_task and masked_image")


def head_claim(by_split: BySplit) -> ClaimResult:
    """The label head's accuracy against image_label's standalone classifier."""
    claim = f"label-head accuracy within {-HEAD_GAP.bound * 100:.0f} points of a standalone classifier (difference)"
    split = pick_split(by_split, ("image_label",))
    if split is not None:
        runs = by_split[split]["image_label"]
        a, b, seeds = paired(runs, runs, "label_head_accuracy", "standalone_classifier_accuracy")
        if seeds:
            return decide(claim, HEAD_GAP, split, cs.bootstrap_paired(a, b, "difference"), seeds)
    return not_run(claim, HEAD_GAP.describe(), "needs image_label's label-head and standalone accuracies")


def restoration_claims(by_split: BySplit, ratios: Sequence[float]) -> list[ClaimResult]:
    """Restoration PSNR above the masked input's and SDEdit's at every mask ratio, as generated and pasted back."""
    out = []
    split = pick_split(by_split, ("single_task", MASKED))
    for how, kept in RESTORATIONS:
        claim = f"restoration PSNR better than the masked input and than SDEdit at every mask ratio ({how})"
        parts = []
        if split is not None:
            masked, single = by_split[split][MASKED], by_split[split]["single_task"]
            for r in ratios:
                tag = ratio_tag(r)
                for name, other, key in (("input", masked, f"masked_input_psnr_{tag}"),
                                         ("SDEdit", single, f"sdedit{kept}_psnr_{tag}")):
                    a, b, seeds = paired(masked, other, f"restored{kept}_psnr_{tag}", key)
                    if seeds:
                        parts.append(decide(f"{r:.0%} vs {name}", RESTORATION, split,
                                            cs.bootstrap_paired(a, b, "difference"), seeds))
        if not ratios or len(parts) < 2 * len(ratios):
            out.append(not_run(claim, RESTORATION.describe(), "needs masked_image and single_task runs at every "
                                                              "mask ratio"))
        else:
            out.append(all_parts(claim, RESTORATION.describe() + " dB at every ratio", parts, RESTORATION))
    return out


def claims(by_split: BySplit, ratios: Sequence[float] = (), study: Sequence[Row] = ()) -> list[ClaimResult]:
    """Every claim at a preset's scale, in the report's order."""
    out = [ratio_claim(by_split, e, "single_task", "fid", f"joint image+{what} FID / single-task FID at equal NFE",
                       FID_RATIO) for e, what in JOINT]
    out.append(baseline_claim(study))
    out.append(metric_claim(by_split, "image_label", "joint_coherence", "joint coherence (image_label)", COHERENCE))
    out.append(metric_claim(by_split, "image_label", "conditional_fidelity", "label-conditioned fidelity", FIDELITY))
    out.append(noise_claim(by_split))
    for experiment, (given, target) in STEER.items():
        out.append(metric_claim(by_split, experiment, "conditional_fidelity",
                                f"an image generated given {given} is of its source image's class", target))
    out.append(steps_claim(by_split))
    out.append(head_claim(by_split))
    return out + restoration_claims(by_split, ratios)
