"""Learning curves for the report: the mean curve over seeds, the masked-image steps ratio, and the PNG plots
(drawn with Pillow; no matplotlib needed)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from experiments.result_files import Run

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf", "#000000", "#aec7e8"]


def mean_curve(runs: Sequence[Run], key: str = "fid") -> list[tuple[float, float]]:
    """(step, mean of ``key`` over the runs) at the steps every run's learning curve recorded; empty when a run's
    curve lacks it. A run listed twice counts twice (a bootstrap resample)."""
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


def ratio_value(single: Sequence[Run], masked: Sequence[Run]) -> float:
    """The steps ratio as a number: inf when the masked curve never reached the target, NaN without curves."""
    sr = steps_ratio(single, masked)
    if sr is None:
        return math.nan
    return math.inf if sr.ratio is None else sr.ratio


def plot_curves(curves: Mapping[str, Sequence[tuple[float, float]]], path: Path, title: str,
                x_label: str = "training steps", log_y: bool = False) -> Path:
    """A line plot of FID against training steps (or ``x_label``); ``log_y``: a logarithmic FID axis."""
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
        py = xy(0, y)[1]
        d.line([(L - 4, py), (L, py)], fill="black")
        d.text((5, py - 6), f"{y:.3g}", fill="black")
        qx = xy(xmax * i / 4, ymax)[0]
        d.line([(qx, H - B), (qx, H - B + 4)], fill="black")
        d.text((qx - 12, H - B + 8), f"{xmax * i / 4:.0f}", fill="black")
    d.text((W // 2 - 40, H - 20), x_label, fill="black")
    d.text((5, 10), f"FID{' (log scale)' if log_y else ''}  -  {title}", fill="black")
    for i, (name, c) in enumerate(curves.items()):
        col = COLORS[i % len(COLORS)]
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


def curve_section(by_exp: Mapping[str, Sequence[Run]], assets: Path, link_prefix: str, preset: str,
                  split: str) -> list[str]:
    """The learning-curve plot and table of the single-task and masked-image defaults (nothing without curves)."""
    curves = {f"{e} (mean of {len(by_exp[e])} seed{'s' * (len(by_exp[e]) > 1)})": mean_curve(by_exp[e])
              for e in ("single_task", "masked_image") if e in by_exp and mean_curve(by_exp[e])}
    if not curves:
        return []
    png = plot_curves(curves, assets / f"{preset}_learning_curve.png", f"preset {preset}")
    first = next(iter(by_exp.get("masked_image", by_exp.get("single_task", []))))
    lines = ["### Learning curve\n",
             f"FID of every checkpoint (EMA weights, n_generated = {first.data.get('protocol', {}).get('n_curve', '?')}"
             f" per point; the runs of split `{split}`).\n",
             f"![learning curve]({link_prefix}/{png.name})\n",
             "| steps | " + " | ".join(curves) + " |", "|---|" + "---|" * len(curves)]
    for s in sorted({s for c in curves.values() for s, _ in c}):
        row = [next((f"{f:.3f}" for t, f in c if t == s), "-") for c in curves.values()]
        lines.append(f"| {s:.0f} | " + " | ".join(row) + " |")
    return lines + [""]
