"""Generate docs/results.md from the experiments' JSON results: one table per setting (every metric, per seed, with
mean and spread over seeds), its protocol, hardware and wall time, the sample grids, the learning-curve plot, and
a plain statement of which of the paper's claims held at this scale. A claim whose runs are missing is "not run".

    python -m experiments.make_results [--results experiments/results] [--out docs/results.md]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from experiments.common import DEFAULT_RESULTS, RESULT_FORMAT, ratio_tag
from mtd_core.errors import MTDError

EXPERIMENTS = ("single_task", "diffusers_baseline", "image_label", "masked_image", "image_transition",
               "image_representation", "image_caption")
TITLES = {
    "single_task": "Single-task DDPM (N = 1)",
    "diffusers_baseline": "diffusers UNet2DModel + DDPMScheduler",
    "image_label": "Joint image-label",
    "masked_image": "Image + masked image",
    "image_transition": "Image transition (image <-> edge map)",
    "image_representation": "Image + representation",
    "image_caption": "Image + caption",
}
PRESET_ORDER = ("gpu", "cpu", "digits", "smoke")
NOTES_DIR = Path(__file__).resolve().parent / "notes"
"""Hand-written observations per preset (``notes/<preset>.md``), included verbatim; they cite the tables' numbers."""
FID_RATIO_TARGET = 1.05
"""A multi-task model's joint FID against the single-task model's, at the same sampler and NFE (issue 13)."""
BASELINE_RATIO_TARGET = 1.1
"""The single-task FID at BASELINE_NFE against diffusers' DPMSolverMultistepScheduler at the same NFE."""
BASELINE_NFE = 10
COHERENCE_TARGET = 0.85
FIDELITY_TARGET = 0.90
GUIDED = {"nfe": 20, "given": "label", "cguide": 1}
"""The sampler study's setting of label-conditioned generation guided by image_label's standalone classifier
(chosen on the validation protocol: docs/sampling.md, "A classifier of the image alone")."""
STEER_TARGET = 0.80
"""Images generated given a caption or representation in the class of the image it came from (session 21's
measure; the issue is silent: the unguided label model's 85% is the level a conditional path reaches here)."""
NOISE_LIKE_TARGET = 0.02
JOINT = (("image_label", "label"), ("image_caption", "caption"), ("image_representation", "representation"))
ACCURACY_GAP = 0.02
RESTORATIONS = (("as generated", ""), ("observed pixels pasted back", "_kept"))  # restoration variants, key infixes
STUDY = "sampler_study.jsonl"
"""The sampler study's rows of a preset (``<results>/<preset>/sampler_study.jsonl``, experiments/sampler_study.py)."""
STUDY_NFE = (5, 10, 20, 50)


@attrs.frozen
class Run:
    """One result JSON.

    Attributes:
        path: the file.
        experiment: the experiment's name.
        preset: the preset's name.
        seed: the seed.
        data: the parsed JSON.
    """

    path: Path
    experiment: str
    preset: str
    seed: int
    data: dict[str, Any]

    @property
    def metrics(self) -> dict[str, float]:
        """Metric name -> value (non-finite values stored as strings are converted back)."""
        return {k: float(v) for k, v in self.data["metrics"].items()}


@attrs.frozen
class Claim:
    """One of the paper's claims at this scale.

    Attributes:
        claim: what the paper claims (the target).
        status: "held", "did not hold" or "not run".
        evidence: the numbers behind the status.
    """

    claim: str
    status: str
    evidence: str


def load_runs(results: Path) -> list[Run]:
    """Every ``<results>/<preset>/<experiment>/seed<k>.json``; a file that is not a result is an error naming it."""
    runs = []
    for path in sorted(results.glob("*/*/seed*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise MTDError(f"{path}: not a readable result JSON: {e}") from None
        if not isinstance(data, dict) or data.get("format") != RESULT_FORMAT:
            raise MTDError(f"{path}: not an experiment result (expected \"format\": {RESULT_FORMAT!r})")
        for key in ("experiment", "preset", "seed", "metrics", "protocol", "hardware", "wall_s"):
            if key not in data:
                raise MTDError(f"{path}: the result lacks the key {key!r}")
        runs.append(Run(path=path, experiment=data["experiment"], preset=data["preset"], seed=int(data["seed"]),
                        data=data))
    return runs


def group(runs: Sequence[Run]) -> dict[str, dict[str, list[Run]]]:
    """preset -> experiment -> runs sorted by seed."""
    out: dict[str, dict[str, list[Run]]] = {}
    for r in runs:
        out.setdefault(r.preset, {}).setdefault(r.experiment, []).append(r)
    for by_exp in out.values():
        for rs in by_exp.values():
            rs.sort(key=lambda r: r.seed)
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(v: float) -> str:
    """A compact number."""
    if math.isnan(v) or math.isinf(v):
        return str(v)
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.3g}"
    if float(v).is_integer() and abs(v) >= 1:
        return str(int(v))
    return f"{v:.4g}"


def metric_mean(runs: Sequence[Run], key: str) -> tuple[float, float, int] | None:
    """Mean, spread and count of a metric over the runs that have it, or None."""
    values = [r.metrics[key] for r in runs if key in r.metrics]
    if not values:
        return None
    m, s = mean_std(values)
    return m, s, len(values)


def paired_seeds(a: Sequence[Run], b: Sequence[Run]) -> tuple[list[Run], list[Run]]:
    """The runs of ``a`` and of ``b`` (sorted by seed) on the seeds both ran: a comparison of two experiments'
    means compares the same seeds, not a third seed that only one of them has."""
    seeds = {r.seed for r in a} & {r.seed for r in b}
    return ([r for r in a if r.seed in seeds], [r for r in b if r.seed in seeds])


def _pm(stat: tuple[float, float, int] | None) -> str:
    if stat is None:
        return "not run"
    m, s, n = stat
    return f"{fmt(m)} +- {fmt(s)} ({n} seeds)" if n > 1 else f"{fmt(m)} (1 seed)"


# -- tables ---------------------------------------------------------------------------------------------------
def metrics_table(runs: Sequence[Run]) -> list[str]:
    """Every metric: one column per seed, then mean +- standard deviation when there are several seeds."""
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r.data["metrics"] if k not in keys]
    multi = len(runs) > 1
    head = ["metric"] + [f"seed {r.seed}" for r in runs] + (["mean +- std"] if multi else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in keys:
        vals = [r.metrics.get(k) for r in runs]
        cells = [fmt(v) if v is not None else "-" for v in vals]
        if multi:
            present = [v for v in vals if v is not None]
            m, s = mean_std(present)
            cells.append(f"{fmt(m)} +- {fmt(s)}")
        lines.append(f"| `{k}` | " + " | ".join(cells) + " |")
    return lines


def _plain(v: Any) -> str:
    if isinstance(v, float):
        return fmt(v)
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v, separators=(", ", ": ")) + "`"
    return str(v)


def protocol_lines(runs: Sequence[Run]) -> list[str]:
    """The protocol of the first seed (values that differ between seeds are listed per seed), hardware, wall time."""
    first = runs[0].data["protocol"]
    lines = []
    for k, v in first.items():
        others = [r.data["protocol"].get(k) for r in runs[1:]]
        if all(o == v for o in others):
            lines.append(f"- {k}: {_plain(v)}")
        else:
            lines.append(f"- {k}: " + ", ".join(f"seed {r.seed}: {_plain(r.data['protocol'].get(k))}" for r in runs))
    for r in runs:
        hw = r.data["hardware"]
        where = hw.get("gpu") or f"{hw.get('cpu')} ({hw.get('cpu_count')} cores, {hw.get('torch_threads')} torch threads)"
        load = f", 1-minute load average {hw['load_average_1m']} at the end" if hw.get("load_average_1m") is not None else ""
        lines.append(f"- seed {r.seed}: wall time {fmt(float(r.data['wall_s']))} s on {where}, device "
                     f"{hw.get('device')}, torch {hw.get('torch')}{load}; finished {r.data.get('finished_utc', '?')}")
    return lines


# -- the learning curve ---------------------------------------------------------------------------------------
def mean_curve(runs: Sequence[Run], key: str = "fid") -> list[tuple[float, float]]:
    """(step, mean FID over seeds) at the steps every run recorded (of the curve points' ``key``). Empty when a run's
    curve lacks it."""
    curves = [{p["step"]: p[key] for p in r.data.get("curve", []) if key in p} for r in runs]
    if not curves or not all(curves):
        return []
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return [(s, statistics.fmean(c[s] for c in curves)) for s in steps]


@attrs.frozen
class StepsRatio:
    """How many steps the masked-image run needs to reach the single-task run's final FID.

    Attributes:
        target_fid: the single-task run's final curve FID (mean over seeds).
        single_steps: the single-task run's total steps.
        masked_steps: the first checkpoint step at which the masked-image mean curve is <= target, or None.
        ratio: masked_steps / single_steps, or None when the target was not reached.
    """

    target_fid: float
    single_steps: float
    masked_steps: float | None
    ratio: float | None


def steps_ratio(single: Sequence[Run], masked: Sequence[Run], key: str = "fid") -> StepsRatio | None:
    """The convergence ratio from the two mean learning curves of ``key`` (None without both curves)."""
    sc, mc = mean_curve(single, key), mean_curve(masked, key)
    if not sc or not mc:
        return None
    target_step, target = sc[-1]
    reached = next((s for s, f in mc if f <= target), None)
    return StepsRatio(target_fid=target, single_steps=target_step, masked_steps=reached,
                      ratio=None if reached is None else reached / target_step)


def plot_curves(curves: Mapping[str, Sequence[tuple[float, float]]], path: Path, title: str,
                x_label: str = "training steps", log_y: bool = False) -> Path:
    """A line plot of FID against training steps (or ``x_label``), drawn with Pillow (no matplotlib needed);
    ``log_y``: a logarithmic FID axis (values a factor of 50 apart stay readable)."""
    from PIL import Image, ImageDraw

    W, H, L, R, B = 640, 400, 70, 20, 50
    T = 34 + 16 * len(curves)  # room for the title and the legend above the plot
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    pts = [p for c in curves.values() for p in c]
    xmax = max(p[0] for p in pts) or 1.0
    ymax = max(p[1] for p in pts) * 1.05 or 1.0
    ymin = min(p[1] for p in pts) / 1.05 if log_y else 0.0

    def frac(f: float) -> float:
        return math.log(f / ymin) / math.log(ymax / ymin) if log_y else f / ymax

    def xy(s: float, f: float) -> tuple[float, float]:
        return L + (W - L - R) * s / xmax, H - B - (H - T - B) * frac(f)

    d.line([(L, T), (L, H - B), (W - R, H - B)], fill="black")
    for i in range(5):
        y = ymin * (ymax / ymin) ** (i / 4) if log_y else ymax * i / 4
        px, py = xy(0, y)
        d.line([(L - 4, py), (L, py)], fill="black")
        d.text((5, py - 6), f"{y:.3g}", fill="black")
        s = xmax * i / 4
        qx = xy(s, ymax)[0]
        d.line([(qx, H - B), (qx, H - B + 4)], fill="black")
        d.text((qx - 12, H - B + 8), f"{s:.0f}", fill="black")
    d.text((W // 2 - 40, H - 20), x_label, fill="black")
    d.text((5, 10), f"FID{' (log scale)' if log_y else ''}  -  {title}", fill="black")
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
              "#17becf", "#000000", "#aec7e8"]
    for i, (name, c) in enumerate(curves.items()):
        col = colors[i % len(colors)]
        line = [xy(s, f) for s, f in c]
        if len(line) > 1:
            d.line(line, fill=col, width=2)
        for x, y in line:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=col)
        d.line([(L, 30 + 16 * i), (L + 20, 30 + 16 * i)], fill=col, width=2)
        d.text((L + 26, 24 + 16 * i), name, fill=col)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


# -- claims ---------------------------------------------------------------------------------------------------
def claims(by_exp: Mapping[str, Sequence[Run]], ratios: Sequence[float],
           study: Sequence[Mapping[str, Any]] = ()) -> list[Claim]:
    """The targets at this preset's scale (the paper's claims and issue 13's), each held / did not hold / not run,
    with its numbers. ``study`` holds the sampler study's test rows (for the diffusers comparison)."""
    single, joint = by_exp.get("single_task", []), by_exp.get("image_label", [])
    masked = by_exp.get("masked_image", [])
    out = []

    for experiment, what in JOINT:
        claim = (f"joint image+{what} FID <= {FID_RATIO_TARGET} x single-task FID (same sampler and NFE, the seeds "
                 f"both ran)")
        pair = paired_seeds(single, by_exp.get(experiment, []))
        s, j = metric_mean(pair[0], "fid"), metric_mean(pair[1], "fid")
        if s is None or j is None:
            out.append(Claim(claim, "not run", f"single-task FID {_pm(s)}, joint FID {_pm(j)} on common seeds"))
        else:
            ok = j[0] <= FID_RATIO_TARGET * s[0]
            per_seed = ", ".join(f"{b.metrics['fid'] / a.metrics['fid']:.2f}" for a, b in zip(*pair, strict=True))
            out.append(Claim(claim, "held" if ok else "did not hold",
                             f"joint {_pm(j)} vs single-task {_pm(s)}: ratio {j[0] / s[0]:.3f} (per seed "
                             f"{', '.join(str(r.seed) for r in pair[0])}: {per_seed})"))

    claim = (f"single-task FID at {BASELINE_NFE} NFE <= {BASELINE_RATIO_TARGET} x diffusers' "
             f"DPMSolverMultistepScheduler at {BASELINE_NFE} NFE (test protocol of the sampler study)")
    ours = study_fid(study, "single_task", None, BASELINE_NFE)
    theirs = study_fid(study, "diffusers_baseline", "diffusers_dpmpp", BASELINE_NFE)
    if ours is None or theirs is None:
        out.append(Claim(claim, "not run", "needs the sampler study's test rows of single_task (defaults) and "
                                           "diffusers_baseline (diffusers_dpmpp)"))
    else:
        ok = ours[0] <= BASELINE_RATIO_TARGET * theirs[0]
        out.append(Claim(claim, "held" if ok else "did not hold",
                         f"mtd {_pm(ours)} vs diffusers {_pm(theirs)}: ratio {ours[0] / theirs[0]:.3f}"))

    claim = f"joint coherence >= {COHERENCE_TARGET:.0%}"
    c, real = metric_mean(joint, "joint_coherence"), metric_mean(joint, "feature_net_test_accuracy")
    ceiling = "" if real is None else f"; real test pairs score {real[0]:.1%} (the feature network's accuracy)"
    out.append(Claim(claim, "not run", "no image_label run") if c is None else
               Claim(claim, "held" if c[0] >= COHERENCE_TARGET else "did not hold",
                     f"joint coherence {_pm(c)}{ceiling}"))

    claim = f"label-conditioned fidelity >= {FIDELITY_TARGET:.0%}"
    f = metric_mean(joint, "conditional_fidelity")
    out.append(Claim(claim, "not run", "no image_label run") if f is None else
               Claim(claim, "held" if f[0] >= FIDELITY_TARGET else "did not hold", f"conditional fidelity {_pm(f)}"))

    claim = (f"label-conditioned fidelity >= {FIDELITY_TARGET:.0%} with the standalone classifier's guidance at "
             f"scale {GUIDED['cguide']} (test protocol of the sampler study)")
    g = study_metric(study, "image_label", GUIDED, "conditional_fidelity")
    out.append(Claim(claim, "not run", f"needs the sampler study's test rows of image_label at {GUIDED}") if g is None
               else Claim(claim, "held" if g[0] >= FIDELITY_TARGET else "did not hold",
                          f"conditional fidelity {_pm(g)}"))

    claim = (f"an image generated given a caption or representation is of its source image's class in >= "
             f"{STEER_TARGET:.0%} of cases")
    steer = {e: metric_mean(by_exp.get(e, []), "conditional_fidelity")
             for e in ("image_caption", "image_representation")}
    steer = {e: v for e, v in steer.items() if v is not None}
    out.append(Claim(claim, "not run", "no image_caption or image_representation run reports it") if not steer else
               Claim(claim, "held" if all(v[0] >= STEER_TARGET for v in steer.values()) else "did not hold",
                     "; ".join(f"{e} {_pm(v)}" for e, v in steer.items()) + " (chance 10%)"))

    claim = f"noise-like share <= {NOISE_LIKE_TARGET:.0%} for every mtd model and every generation mode"
    shares = {f"{e}{'' if k == 'noise_like' else ' (conditional)'}": metric_mean(rs, k)
              for e, rs in by_exp.items() if e != "diffusers_baseline"  # diffusers' own sampler: in its table
              for k in ("noise_like", "conditional_noise_like")}
    shares = {k: v for k, v in shares.items() if v is not None}
    if not shares:
        out.append(Claim(claim, "not run", "no run reports it"))
    else:
        worst = max(shares, key=lambda k: shares[k][0])  # type: ignore[index]
        ok = all(v[0] <= NOISE_LIKE_TARGET for v in shares.values())
        out.append(Claim(claim, "held" if ok else "did not hold",
                         "; ".join(f"{k} {v[0]:.1%}" for k, v in shares.items()) + f" (worst: {worst})"))

    claim = f"label-head accuracy within {ACCURACY_GAP * 100:.0f} points of a standalone classifier"
    h, k = metric_mean(joint, "label_head_accuracy"), metric_mean(joint, "standalone_classifier_accuracy")
    if h is None or k is None:
        out.append(Claim(claim, "not run", "no image_label run"))
    else:
        ok = h[0] >= k[0] - ACCURACY_GAP
        out.append(Claim(claim, "held" if ok else "did not hold",
                         f"label head {_pm(h)} vs standalone classifier {_pm(k)} (difference "
                         f"{(h[0] - k[0]) * 100:+.1f} points)"))

    claim = ("masked-image training reaches the single-task final FID in fewer steps (steps ratio < 1, the seeds "
             "both ran)")
    sr = steps_ratio(*paired_seeds(single, masked))
    if sr is None:
        out.append(Claim(claim, "not run", "needs the learning curves of single_task and masked_image"))
    elif sr.ratio is None:
        out.append(Claim(claim, "did not hold", f"the masked-image curve never reached the single-task final FID "
                                                f"{sr.target_fid:.3f} (at step {sr.single_steps:.0f}) within its "
                                                f"{sr.single_steps:.0f} steps: ratio > 1"))
    else:
        out.append(Claim(claim, "held" if sr.ratio < 1 else "did not hold",
                         f"masked image reaches FID <= {sr.target_fid:.3f} at step {sr.masked_steps:.0f} of "
                         f"{sr.single_steps:.0f}: ratio {sr.ratio:.2f}"))

    for how, kept in RESTORATIONS:
        claim = f"restoration PSNR better than the masked input and than SDEdit at every mask ratio ({how})"
        rows, ok, missing = [], True, False
        for r in ratios:
            tag = ratio_tag(r)
            mt, mi, sd = (metric_mean(masked, f"restored{kept}_psnr_{tag}"),
                          metric_mean(masked, f"masked_input_psnr_{tag}"),
                          metric_mean(single, f"sdedit{kept}_psnr_{tag}"))
            if mt is None or mi is None or sd is None:
                missing = True
                continue
            ok = ok and mt[0] > mi[0] and mt[0] > sd[0]
            rows.append(f"{r:.0%}: {mt[0]:.2f} vs input {mi[0]:.2f}, SDEdit {sd[0]:.2f} dB")
        if missing:
            out.append(Claim(claim, "not run", "needs masked_image and single_task runs" +
                             (f" (partial: {'; '.join(rows)})" if rows else "")))
        else:
            out.append(Claim(claim, "held" if ok else "did not hold", "; ".join(rows)))
    return out


# -- the sampler study ----------------------------------------------------------------------------------------
def load_study(results: Path, preset: str) -> list[dict[str, Any]]:
    """The sampler study's rows of ``preset`` on the test protocol (an absent file: none)."""
    path = results / preset / STUDY
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MTDError(f"{path}, line {i}: not JSON: {e}") from None
        if row.get("split") == "test" and not row.get("variant"):
            rows.append(row)
    return rows


def study_fid(rows: Sequence[Mapping[str, Any]], experiment: str, sampler: str | None, nfe: int
              ) -> tuple[float, float, int] | None:
    """Mean FID over seeds of ``experiment`` with ``sampler`` (None: mtd's default sampler) at ``nfe``, among
    settings that change nothing else."""
    from mtd_core.sampling.options import DEFAULT_SAMPLER

    wants = [{"nfe": nfe}, {"sampler": sampler or DEFAULT_SAMPLER, "nfe": nfe}] if sampler is None else [
        {"sampler": sampler, "nfe": nfe}]
    by_seed = {r["seed"]: float(r["fid"]) for r in rows if r["experiment"] == experiment and r["setting"] in wants}
    if not by_seed:
        return None
    m, s = mean_std(list(by_seed.values()))
    return m, s, len(by_seed)


def study_metric(rows: Sequence[Mapping[str, Any]], experiment: str, setting: Mapping[str, Any], key: str
                 ) -> tuple[float, float, int] | None:
    """Mean over seeds of ``key`` in ``experiment``'s rows of exactly ``setting`` (a row's ``classifier_seed``, which
    guidance classifier it used, aside)."""
    by_seed = {r["seed"]: float(r[key]) for r in rows if r["experiment"] == experiment and key in r
               and {k: v for k, v in r["setting"].items() if k != "classifier_seed"} == dict(setting)}
    if not by_seed:
        return None
    m, s = mean_std(list(by_seed.values()))
    return m, s, len(by_seed)


def study_section(rows: Sequence[Mapping[str, Any]], assets: Path, link_prefix: str, preset: str) -> list[str]:
    """FID against NFE for every sampler and model (mean over seeds), as a table and a PNG plot."""
    if not rows:
        return []
    series: dict[str, list[tuple[float, float]]] = {}
    seeds: dict[str, set[int]] = {}
    for r in rows:
        setting = r["setting"]
        if set(setting) - {"sampler", "nfe"}:
            continue
        name = f"{r['experiment']}: {setting.get('sampler', 'defaults')}"
        seeds.setdefault(name, set()).add(int(r["seed"]))
    for name in sorted(seeds):
        experiment, sampler = name.split(": ")
        pts = [(float(n), stat[0]) for n in STUDY_NFE
               if (stat := study_fid(rows, experiment, None if sampler == "defaults" else sampler, n)) is not None]
        if pts:
            series[name] = pts
    if not series:
        return []
    lines = ["### Samplers: FID against NFE\n",
             "From `python -m experiments.sampler_study --split test` (reference: the whole test split, the "
             "experiments' own seeds, mean over the seeds listed; each sampler with the default spacing and base "
             "estimate, docs/sampling.md). NFE = network evaluations per sample.\n",
             "| model: sampler | seeds | " + " | ".join(f"NFE {n}" for n in STUDY_NFE) + " |",
             "|---|---|" + "---|" * len(STUDY_NFE)]
    for name, pts in series.items():
        at = dict(pts)
        lines.append(f"| {name} | {len(seeds[name])} | " + " | ".join(fmt(at[n]) if n in at else "-"
                                                                    for n in map(float, STUDY_NFE)) + " |")
    png = plot_curves(series, assets / f"{preset}_fid_vs_nfe.png", f"preset {preset}", x_label="NFE", log_y=True)
    lines += ["", f"![FID against NFE]({link_prefix}/{png.name})", ""]
    return lines


def summary_sentence(preset: str, found: Sequence[Claim]) -> str:
    """One plain sentence: which claims held, which did not, which were not run."""
    groups = {status: [c.claim for c in found if c.status == status] for status in ("held", "did not hold", "not run")}
    said = [f"{status.capitalize()}: " + "; ".join(claims_) + "." for status, claims_ in groups.items() if claims_]
    return f"In short, at the `{preset}` scale. " + " ".join(said)


def baseline_sentence(by_exp: Mapping[str, Sequence[Run]]) -> str:
    """mtd's single-task model against the diffusers baseline of the same budget (not a claim of the paper)."""
    s = metric_mean(by_exp.get("single_task", []), "fid")
    d = metric_mean(by_exp.get("diffusers_baseline", []), "fid")
    return ("Reference point: the FID of mtd's single-task model (mtd's default sampler) and of diffusers' "
            "UNet2DModel + DDPMScheduler with a matched parameter count, trained on the same data, steps and batch "
            f"(sampled with DPMSolverMultistepScheduler), both at the preset's NFE: mtd {_pm(s)}, diffusers {_pm(d)}.")


# -- the report -----------------------------------------------------------------------------------------------
INTRO = """# Results: MT-Diffusion at small scale

Generated by `python -m experiments.make_results` from the JSON files that the experiment scripts write
(`experiments/results/<preset>/<experiment>/seed<k>.json`); do not edit by hand. Every number below comes from a
run listed with its hardware and wall time; a claim whose runs are missing is marked "not run".

Reproduce one setting with `python -m experiments.<experiment> --preset <preset> --seed <k>`
(experiments: {experiments}), then `python -m experiments.make_results`. Presets (experiments/presets.py):
`smoke` (digits, a tiny U-Net, a few steps: exercises the code, measures nothing), `digits` (scikit-learn's 8x8
digits, 1200 steps, minutes on a CPU), `cpu` (Fashion-MNIST 28x28, full 60k/10k, 2000 steps, about an hour per run
on 2 free cores; needs `apt-get install -y dataset-fashion-mnist`), `gpu` (Fashion-MNIST, a larger U-Net, 30k steps,
n = 10 000). Within a preset every setting shares the backbone, steps, batch size, learning-rate schedule and EMA.

Protocol. Distribution metrics (classifier-FID, KID, precision/recall) use the penultimate features of a small CNN
trained on the training split (docs/metrics.md), whose test accuracy is printed with each table; FID is biased in n,
so compare FIDs only within a preset (equal n). The reference set is the test split. Every sample comes from the
EMA weights with mtd's default sampler and options (`generate`'s defaults, docs/sampling.md) at the preset's number
of network evaluations (`nfe`); the protocol of each table names them. `noise_like` is the share of generated
images rougher (in total variation) than 99% of the real test images (docs/metrics.md). Generation given an
aggregated modality (label -> image, caption -> image, representation -> image, restoration, edges -> image) uses
the same sampler with replacement conditioning; `conditional_fidelity` is the share of images so generated that the
feature network puts in the requested class or in the class of the test image whose caption or representation was
given. Read-outs (label head, image -> edges, representation, caption) take the given image at
t = read_t * T. Restoration inputs (patch masks seeded by the ratio) are identical across experiments and seeds;
the masked-image model was trained at ratio 0.5 only; restoration keeps the masked image's unhidden pixels in every
step's base estimate (`generate`'s `keep_observed`, the default) and is scored on the generated images as they are and
again with the observed pixels pasted back (`*_kept_*`, `mtd_plugins.masked_image.keep_observed`); restoration PSNR
is pooled over the pairs (the PSNR of the mean squared error over all of them), since a restoration that keeps the
observed pixels can be exact on an image. The ELBO (`elbo_bpd`, bits/dim) is the bound of the base (prior +
denoising + reconstruction) estimated on a seeded test subsample: every example draws its own `elbo_timesteps`
denoising timesteps, stratified across 2..T, an unbiased estimate of the sum over all T - 1 terms (counts in the
tables); `elbo_bpd_se` is the standard error over examples, which includes the timestep draws. Each aggregated
modality's decoder term is listed apart in nats (`elbo_decode_<name>_nats`; docs/math.md, section 5).
"""


def copy_grids(runs: Sequence[Run], assets: Path, link_prefix: str) -> list[str]:
    """Copy every run's PNG grids into ``assets`` and return markdown image links."""
    lines = []
    assets.mkdir(parents=True, exist_ok=True)
    for r in runs:
        for name in r.data.get("grids", []):
            src = r.path.parent / name
            if not src.is_file():
                lines.append(f"(grid {name} of seed {r.seed} is missing from {r.path.parent})")
                continue
            dst = assets / f"{r.preset}_{r.experiment}_{name}"
            shutil.copyfile(src, dst)
            lines.append(f"![{r.experiment} seed {r.seed}: {name}]({link_prefix}/{dst.name})")
    return lines


def render(runs: Sequence[Run], assets: Path, link_prefix: str, results: Path) -> str:
    """The whole markdown report (and its PNG files in ``assets``); ``results`` also holds the sampler studies."""
    parts = [INTRO.format(experiments=", ".join(EXPERIMENTS))]
    if not runs:
        parts.append("No experiment has been run yet: every claim is **not run**.\n")
        return "\n".join(parts)
    grouped = group(runs)
    presets = [p for p in PRESET_ORDER if p in grouped] + sorted(p for p in grouped if p not in PRESET_ORDER)
    for preset in presets:
        by_exp = grouped[preset]
        study = load_study(results, preset)
        cfg = next(iter(by_exp.values()))[0].data.get("preset_config", {})
        ratios = [float(r) for r in cfg.get("mask_ratios", [])]
        parts.append(f"## Preset `{preset}`\n")
        parts.append(f"Dataset `{cfg.get('dataset', {}).get('name', '?')}`, {cfg.get('image_size')}x"
                     f"{cfg.get('image_size')} images, {cfg.get('steps')} steps of batch {cfg.get('batch_size')}, "
                     f"backbone `{json.dumps(cfg.get('backbone', {}))}`.\n")
        parts.append("### Claims of the paper at this scale\n")
        if preset == "smoke":
            parts.append("The smoke preset trains for a few steps to exercise the code; its numbers measure nothing, "
                         "so no claim is evaluated on it.\n")
        else:
            parts.append("| claim | status | evidence |\n|---|---|---|")
            found = claims(by_exp, ratios, study)
            for c in found:
                parts.append(f"| {c.claim} | **{c.status}** | {c.evidence} |")
            parts.append("")
            parts.append(summary_sentence(preset, found) + "\n")
            parts.append(baseline_sentence(by_exp) + "\n")
        notes = NOTES_DIR / f"{preset}.md"
        if notes.is_file():
            parts.append("### Observations\n")
            parts.append(notes.read_text(encoding="utf-8").strip() + "\n")
        parts += study_section(study, assets, link_prefix, preset)
        not_run = [e for e in EXPERIMENTS if e not in by_exp]
        if not_run:
            parts.append("Settings not run at this preset: " + ", ".join(f"`{e}`" for e in not_run) + ".\n")
        curves = {f"{TITLES[e]} (mean of {len(by_exp[e])} seed{'s' * (len(by_exp[e]) > 1)})": mean_curve(by_exp[e])
                  for e in ("single_task", "masked_image") if e in by_exp and mean_curve(by_exp[e])}
        if curves:
            png = plot_curves(curves, assets / f"{preset}_learning_curve.png", f"preset {preset}")
            n = next(iter(by_exp.get("masked_image", by_exp.get("single_task", []))))
            parts.append("### Learning curve\n")
            parts.append(f"FID of every checkpoint (EMA weights, n_generated = "
                         f"{n.data['protocol'].get('n_curve', '?')} per point).\n")
            parts.append(f"![learning curve]({link_prefix}/{png.name})\n")
            parts.append("| steps | " + " | ".join(curves) + " |\n|---|" + "---|" * len(curves))
            steps = sorted({s for c in curves.values() for s, _ in c})
            for s in steps:
                row = [next((f"{f:.3f}" for t, f in c if t == s), "-") for c in curves.values()]
                parts.append(f"| {s:.0f} | " + " | ".join(row) + " |")
            parts.append("")
        for e in [x for x in EXPERIMENTS if x in by_exp] + sorted(x for x in by_exp if x not in EXPERIMENTS):
            rs = by_exp[e]
            parts.append(f"### {TITLES.get(e, e)} (`{e}`)\n")
            parts += metrics_table(rs)
            parts.append("\nProtocol:\n")
            parts += protocol_lines(rs)
            parts.append("")
            parts += copy_grids(rs, assets, link_prefix)
            parts.append("")
    missing = [p for p in PRESET_ORDER if p not in grouped and p != "smoke"]
    if missing:
        parts.append("## Presets not run\n")
        parts.append(", ".join(f"`{p}`" for p in missing) + ": no run of these presets has finished, so every claim "
                     "at their scale is **not run**.\n")
    return "\n".join(parts)


def make_results(results: Path = DEFAULT_RESULTS, out: Path = Path("docs/results.md"),
                 assets: Path | None = None) -> Path:
    """Write the report ``out`` and its PNG files (default: ``<out's folder>/results/``); returns ``out``."""
    from mtd_core.training import write_atomic

    assets = assets if assets is not None else out.parent / "results"
    try:
        link = assets.resolve().relative_to(out.parent.resolve()).as_posix()
    except ValueError:
        link = assets.resolve().as_posix()
    text = render(load_runs(results), assets, link, results)
    write_atomic(out, text)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.make_results``."""
    p = argparse.ArgumentParser(prog="python -m experiments.make_results", description=__doc__)
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help=f"results folder (default {DEFAULT_RESULTS})")
    p.add_argument("--out", type=Path, default=Path("docs/results.md"), help="the report (default docs/results.md)")
    p.add_argument("--assets", type=Path, default=None, help="PNG folder (default: docs/results next to the report)")
    args = p.parse_args(argv)
    try:
        path = make_results(args.results, args.out, args.assets)
    except MTDError as e:
        print(f"experiments.make_results: error: {e}", file=sys.stderr)
        return 2
    print(f"experiments.make_results: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
