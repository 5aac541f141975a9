"""The report's tables: the claims with their intervals and verdicts, and per setting its metrics per seed with the
mean and 95% interval over seeds, FID by sample count, provenance, resolved design, protocol and sample grids."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments import claim_stats as cs
from experiments.claim_checks import ClaimResult
from experiments.claim_stats import Estimate
from experiments.result_files import Run

DESIGN_KEYS = ("aux_channels", "aux_eps", "known_input", "encoding_scale")
MODALITY_KEYS = ("head_grad", "loss_weight", "train_encoder")
SHOWN_IF_SET = ("prior",)  # kind options that change the design, shown where a config gives them
SPLIT_TITLES = {"val": "Validation (split `val`: the numbers the choices were made on)",
                "test": "Test (split `test`, read once per claim after the choice)"}


def fmt(v: float | None) -> str:
    """A compact number."""
    if v is None:
        return "-"
    if math.isnan(v) or math.isinf(v):
        return str(v)
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.3g}"
    if float(v).is_integer() and abs(v) >= 1:
        return str(int(v))
    return f"{v:.4g}"


def interval(est: Estimate | None) -> str:
    """"[low, high]", or why there is none."""
    if est is None:
        return "-"
    if est.low is None or est.high is None:
        return "none (1 seed, 1 draw)"
    return f"[{fmt(est.low)}, {fmt(est.high)}]"


def draws(est: Estimate) -> str:
    """Seeds x draws per seed, e.g. "3 x 2" or "3 x 1-2"."""
    lo, hi = min(est.draws), max(est.draws)
    return f"{est.seeds} x {lo}" if lo == hi else f"{est.seeds} x {lo}-{hi}"


def claims_table(found: Sequence[ClaimResult]) -> list[str]:
    """One row per claim: target, split, mean, interval, per-seed values, seeds x draws, verdict and why."""
    lines = ["| claim | target | split | mean | 95% interval | per seed | seeds x draws | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for c in found:
        e = c.estimate
        if e is None:
            lines.append(f"| {c.claim} | {c.target} | - | - | - | - | - | **{c.verdict.status}** ({c.detail}) |")
            continue
        per_seed = ", ".join(f"{s}: {fmt(v)}" for s, v in zip(c.seeds, e.per_seed, strict=True))
        why = c.verdict.reason + (f"; {c.detail}" if c.detail else "")
        lines.append(f"| {c.claim} | {c.target} | {c.split} | {fmt(e.mean)} | {interval(e)} | {per_seed} | "
                     f"{draws(e)} | **{c.verdict.status}**: {why} |")
    return lines


def summary_sentence(preset: str, found: Sequence[ClaimResult]) -> str:
    """One plain sentence: which claims held, were missed, were inconclusive, were not run."""
    statuses = (cs.HELD, cs.MISSED, cs.INCONCLUSIVE, "not run under the protocol")
    groups = {s: [c.claim for c in found if c.verdict.status == s] for s in statuses}
    said = [f"{s.capitalize()}: " + "; ".join(names) + "." for s, names in groups.items() if names]
    return f"In short, at the `{preset}` scale. " + " ".join(said)


def metrics_table(runs: Sequence[Run]) -> list[str]:
    """Every metric: one column per seed (its mean over draws), then the mean and 95% interval over seeds (and
    their draws, where the result has them)."""
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r.data["metrics"] if k not in keys]
    head = ["metric"] + [f"seed {r.seed}" for r in runs] + ["mean", "95% interval", "seeds x draws"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in keys:
        cells = [fmt(r.metrics.get(k)) for r in runs]
        est = cs.bootstrap_mean([d for r in runs if (d := r.draws(k)) is not None])
        lines.append(f"| `{k}` | " + " | ".join(cells) + f" | {fmt(est.mean)} | {interval(est)} | {draws(est)} |")
    return lines


def fid_curve_table(runs: Sequence[Run]) -> list[str]:
    """FID at each sample count of the results' ``fid_curve`` and its extrapolation FID_inf (nothing without)."""
    curves = {r.seed: r.data["fid_curve"] for r in runs if r.data.get("fid_curve")}
    if not curves:
        return []
    rows: dict[str, dict[int, float]] = {}
    for seed, c in curves.items():
        for n, f in zip(c.get("n", []), c.get("fid", []), strict=False):
            rows.setdefault(f"FID at n = {int(n)}", {})[seed] = float(f)
        if c.get("fid_inf") is not None:
            rows.setdefault("FID_inf", {})[seed] = float(c["fid_inf"])
    order = sorted((k for k in rows if k != "FID_inf"), key=lambda k: int(k.rsplit(" ", 1)[1]))
    head = ["FID by sample count"] + [f"seed {s}" for s in curves] + ["mean", "95% interval"]
    lines = ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in order + (["FID_inf"] if "FID_inf" in rows else []):
        est = cs.bootstrap_mean([[v] for v in rows[name].values()])
        cells = [fmt(rows[name].get(s)) for s in curves]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt(est.mean)} | {interval(est)} |")
    return lines


def _plain(v: Any) -> str:
    if isinstance(v, float):
        return fmt(v)
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v, separators=(", ", ": ")) + "`"
    return str(v)


def design_summary(taskset: dict[str, Any]) -> str:
    """One line of the resolved design: the task set's channels, estimate, known input and encoding scale, and
    every aggregated modality's kind, head gradient share, loss weight, fixed or learned encoder (and a
    representation's prior where given)."""
    parts = [f"{k} {_plain(taskset[k]) if k in taskset else '(default)'}" for k in DESIGN_KEYS]
    for m in taskset.get("modalities", []):
        if m.get("role", "aggregated") != "base":
            opts = ", ".join([f"{k} {_plain(m[k]) if k in m else '(default)'}" for k in MODALITY_KEYS]
                             + [f"{k} {_plain(m[k])}" for k in SHOWN_IF_SET if k in m])
            parts.append(f"{m.get('name', m.get('kind'))} (kind {m.get('kind')}): {opts}")
    return "; ".join(parts)


def provenance_lines(runs: Sequence[Run]) -> list[str]:
    """The setting's commit(s), command(s) and resolved design (one task set: make_results checked it)."""
    commits = sorted({f"`{r.provenance['commit']}`" + (" (dirty)" if r.provenance.get("dirty") else "")
                      for r in runs})
    commands = sorted({c if isinstance(c := r.provenance["command"], str) else " ".join(map(str, c))
                       for r in runs})
    return [f"- commit{'s' * (len(commits) > 1)}: " + ", ".join(commits),
            *(f"- command: `{c}`" for c in commands),
            f"- design: {design_summary(runs[0].provenance['config']['taskset'])}"]


def protocol_lines(runs: Sequence[Run]) -> list[str]:
    """The protocol of the first seed (values that differ between seeds are listed per seed), hardware, wall time."""
    first = runs[0].data.get("protocol", {})
    lines = []
    for k, v in first.items():
        if all(r.data.get("protocol", {}).get(k) == v for r in runs[1:]):
            lines.append(f"- {k}: {_plain(v)}")
        else:
            lines.append(f"- {k}: " + ", ".join(f"seed {r.seed}: {_plain(r.data.get('protocol', {}).get(k))}"
                                               for r in runs))
    for r in runs:
        hw = r.data.get("hardware", {})
        where = hw.get("gpu") or (f"{hw.get('cpu')} ({hw.get('cpu_count')} cores, {hw.get('torch_threads')} torch "
                                  f"threads)")
        nfe = r.data.get("nfe_spent") or {}
        spent = (", network evaluations " + ", ".join(f"{k} {fmt(float(v))}" for k, v in nfe.items())
                 if isinstance(nfe, dict) and nfe else "")
        wall = fmt(float(r.data["wall_s"])) if r.data.get("wall_s") is not None else "?"
        lines.append(f"- seed {r.seed}: wall time {wall} s on {where}, device {hw.get('device')}, torch "
                     f"{hw.get('torch')}{spent}; finished {r.data.get('finished_utc', '?')}")
    return lines


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
            variant = f"{r.variant}_" if r.variant else ""
            dst = assets / f"{r.preset}_{r.experiment}_{variant}{r.split}_{name}"
            shutil.copyfile(src, dst)
            lines.append(f"![{r.experiment} {variant}{r.split} seed {r.seed}: {name}]({link_prefix}/{dst.name})")
    return lines


def setting_section(title: str, by_split: dict[str, list[Run]], assets: Path, link_prefix: str) -> list[str]:
    """One setting: provenance and design, then per split its metrics, FID by sample count, protocol and grids."""
    everything = [r for s in ("val", "test") for r in by_split.get(s, [])]
    parts = [f"### {title}\n", *provenance_lines(everything), ""]
    for split in ("val", "test"):
        runs = by_split.get(split, [])
        if not runs:
            parts.append(f"{SPLIT_TITLES[split]}: no result.\n")
            continue
        parts += [f"#### {SPLIT_TITLES[split]}\n", *metrics_table(runs), *fid_curve_table(runs), "\nProtocol:\n",
                  *protocol_lines(runs), "", *copy_grids(runs, assets, link_prefix), ""]
    return parts
