"""The sampler study's rows for the report (``<results>/<preset>/sampler_study.jsonl``, experiments/sampler_study.py):
FID against NFE per sampler, and the per-seed draws of a setting for the claims (mtd's single-task model against
diffusers' best DPMSolverMultistepScheduler setting, chosen on the validation split)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.report_curves import plot_curves
from experiments.result_files import SPLITS
from mtd_core.errors import MTDError

STUDY = "sampler_study.jsonl"
STUDY_NFE = (5, 10, 20, 50)
Row = Mapping[str, Any]
SeedDraws = dict[int, list[float]]
"""seed -> the per-draw values of one setting."""


def load_study(results: Path, preset: str) -> list[dict[str, Any]]:
    """The sampler study's rows of ``preset`` of the defaults (no variant), either split (an absent file: none)."""
    path = results / preset / STUDY
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MTDError(f"{path}, line {i}: not JSON: {e}") from None
        if row.get("split") in SPLITS and not row.get("variant"):
            rows.append(row)
    return rows


def _key(setting: Mapping[str, Any]) -> str:
    """A setting without its draw number (rows of one setting's draws pool into one)."""
    return json.dumps({k: v for k, v in setting.items() if k != "draw"}, sort_keys=True)


def setting_draws(rows: Sequence[Row], experiment: str, split: str, match: Callable[[Mapping[str, Any]], bool],
                  key: str = "fid") -> dict[str, SeedDraws]:
    """setting (JSON, its draw number left out) -> seed -> the draws of ``key``, of ``experiment``'s rows of ``split``
    whose setting ``match`` accepts (a row's ``draws[key]`` when it has them, else its value as one draw)."""
    out: dict[str, SeedDraws] = {}
    for r in rows:
        if r["experiment"] != experiment or r["split"] != split or key not in r or not match(r["setting"]):
            continue
        values = r.get("draws", {}).get(key) or [r[key]]
        out.setdefault(_key(r["setting"]), {}).setdefault(int(r["seed"]), []).extend(float(v) for v in values)
    return out


def _mean(draws: SeedDraws) -> float:
    return statistics.fmean(statistics.fmean(d) for d in draws.values())


def default_sampler(nfe: int) -> Callable[[Mapping[str, Any]], bool]:
    """A setting of mtd's default sampler at ``nfe`` that changes nothing else."""
    from mtd_core.sampling.options import DEFAULT_SAMPLER

    return lambda s: dict(s, draw=0) in ({"nfe": nfe, "draw": 0}, {"sampler": DEFAULT_SAMPLER, "nfe": nfe, "draw": 0})


def best_setting(rows: Sequence[Row], experiment: str, split: str, match: Callable[[Mapping[str, Any]], bool]
                 ) -> tuple[str, SeedDraws] | None:
    """``experiment``'s setting with the lowest mean FID among those ``match`` accepts, chosen on the validation
    rows when there are any (else on ``split``'s), and its draws on ``split``; None without it."""
    chosen_on = "val" if setting_draws(rows, experiment, "val", match) else split
    candidates = setting_draws(rows, experiment, chosen_on, match)
    on_split = setting_draws(rows, experiment, split, match)
    ranked = sorted((s for s in candidates if s in on_split), key=lambda s: _mean(candidates[s]))
    return (ranked[0], on_split[ranked[0]]) if ranked else None


def study_section(rows: Sequence[Row], assets: Path, link_prefix: str, preset: str) -> list[str]:
    """FID against NFE for every sampler and model (mean over seeds of the means over draws), as a table and a PNG
    plot, on the test rows (the validation rows when there are none)."""
    split = "test" if any(r["split"] == "test" for r in rows) else "val"
    series: dict[str, list[tuple[float, float]]] = {}
    seeds: dict[str, int] = {}
    for experiment in sorted({r["experiment"] for r in rows}):
        plain = setting_draws(rows, experiment, split, lambda s: not set(s) - {"sampler", "nfe", "draw"})
        by_sampler: dict[str, list[tuple[float, float]]] = {}
        for setting, draws in plain.items():
            s = json.loads(setting)
            name = f"{experiment}: {s.get('sampler', 'defaults')}"
            by_sampler.setdefault(name, []).append((float(s["nfe"]), _mean(draws)))
            seeds[name] = max(seeds.get(name, 0), len(draws))
        series.update({k: sorted(v) for k, v in by_sampler.items()})
    if not series:
        return []
    lines = ["### Samplers: FID against NFE\n",
             f"From `python -m experiments.sampler_study --split {split}` (mean over the seeds listed of the means "
             "over draws; each sampler with the default spacing and base estimate, docs/sampling.md). NFE = network "
             "evaluations per sample.\n",
             "| model: sampler | seeds | " + " | ".join(f"NFE {n}" for n in STUDY_NFE) + " |",
             "|---|---|" + "---|" * len(STUDY_NFE)]
    for name in sorted(series):
        at = dict(series[name])
        lines.append(f"| {name} | {seeds[name]} | " + " | ".join(f"{at[n]:.4g}" if n in at else "-"
                                                                  for n in map(float, STUDY_NFE)) + " |")
    png = plot_curves(series, assets / f"{preset}_fid_vs_nfe.png", f"preset {preset}", x_label="NFE", log_y=True)
    return lines + ["", f"![FID against NFE]({link_prefix}/{png.name})", ""]
