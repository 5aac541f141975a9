"""Result JSON: what an experiment's ``run`` returns (Outcome), where its JSON goes, what it records (metrics and
their draws, the FID curve, the NFE spent, provenance, protocol, hardware) and the sample grids beside it.

One run's JSON is ``<results>/<preset>/<experiment>[/variants/<NAME>]/<split>/seed<S>.json`` (RESULT_FORMAT);
``experiments/make_results.py`` turns them into docs/results.md.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from experiments.presets import Preset
from experiments.runs import device_of
from mtd_core.errors import MTDError

DEFAULT_RESULTS = Path("experiments/results")
RESULT_FORMAT = "mtd-experiment-result"
REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    """The output of ``git args`` in the repository, or None outside git (or without git)."""
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def command_line(module: str | None = None, argv: Sequence[str] | None = None) -> str:
    """The command as typed: ``python -m experiments.<module> <argv>`` (default: this process's ``sys.argv``,
    its script path written as ``python -m experiments.<name>`` when it is a script of this folder)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if module is None:
        script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
        if script.suffix == ".py" and script.resolve().parent == Path(__file__).resolve().parent:
            module = script.stem
        else:
            return " ".join([str(script), *args])
    return " ".join(["python", "-m", f"experiments.{module}", *args])


def provenance(run_config: Mapping[str, Any], command: str | None = None) -> dict[str, Any]:
    """Where a result came from: the commit (``git rev-parse HEAD``; "unknown" outside git), whether the working
    tree differed from it (``dirty``: ``git status --porcelain`` non-empty; None outside git), the command line
    (``command``, default :func:`command_line`) and the resolved config of the trained model (``run_config``: an mtd
    run's RunConfig.to_dict(), as its config.json holds it; the diffusers baseline's own training config)."""
    head = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if head is not None else None
    return {"commit": head.strip() if head else "unknown", "dirty": None if status is None else bool(status.strip()),
            "command": command if command is not None else command_line(),
            "config": json.loads(json.dumps(dict(run_config)))}


def hardware(preset: Preset) -> dict[str, Any]:
    """The machine a result was measured on."""
    dev = device_of(preset)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        load = round(os.getloadavg()[0], 2)  # other jobs on the machine slow a run down: recorded with its wall time
    except OSError:
        load = None
    return {"device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average_1m": load,
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}


@attrs.frozen
class Outcome:
    """What an experiment's ``run`` returns: its numbers and how they were obtained.

    Attributes:
        metrics: metric name -> value (every key of the experiment's METRIC_KEYS; the distribution metrics are the
            mean over the draws).
        protocol: sample counts, sampler, steps, t values, model sizes: what the numbers depend on.
        grids: file names of the PNG grids written into the result folder.
        curve: learning-curve points (step, fid, n_generated), if the experiment records one.
        draws: distribution metric name -> its value on each draw (measures.Distribution.draws).
        fid_curve: the FID curve of the pooled samples and its extrapolation (measures.Distribution.fid_curve).
        config: the resolved config of the trained model (provenance); empty: the run folder's config.json.
    """

    metrics: dict[str, float]
    protocol: dict[str, Any]
    grids: list[str] = attrs.field(factory=list)
    curve: list[dict[str, float]] = attrs.field(factory=list)
    draws: dict[str, list[float]] = attrs.field(factory=dict)
    fid_curve: dict[str, Any] = attrs.field(factory=dict)
    config: dict[str, Any] = attrs.field(factory=dict)


def result_path(results: Path, preset: str, experiment: str, seed: int, split: str = "test") -> Path:
    """Where one run's JSON goes (``experiment`` may end in ``/variants/<NAME>``)."""
    return results / preset / experiment / split / f"seed{seed}.json"


def _finite(v: Any) -> Any:
    """JSON without NaN/inf tokens (strict parsers reject them): non-finite floats become strings."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, Mapping):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def write_result(path: Path, experiment: str, preset: Preset, seed: int, outcome: Outcome, wall_s: float,
                 metric_keys: Sequence[str], *, split: str = "test", nfe_spent: Mapping[str, int] | None = None,
                 command: str | None = None) -> dict[str, Any]:
    """Write one run's JSON (atomically) after checking it has every metric key; returns the payload."""
    from mtd_core.training import write_atomic

    missing = [k for k in metric_keys if k not in outcome.metrics]
    if missing:
        raise MTDError(f"experiment {experiment!r}: its result lacks the metrics {missing}")
    payload = {"format": RESULT_FORMAT, "experiment": experiment, "preset": preset.name, "seed": seed,
               "split": split, "metrics": {k: float(v) for k, v in outcome.metrics.items()},
               "draws": {k: [float(x) for x in v] for k, v in outcome.draws.items()},
               "fid_curve": dict(outcome.fid_curve), "nfe_spent": dict(nfe_spent or {}),
               "provenance": provenance(outcome.config, command), "protocol": outcome.protocol,
               "preset_config": preset.to_dict(), "grids": list(outcome.grids), "curve": list(outcome.curve),
               "hardware": hardware(preset), "wall_s": wall_s,
               "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_atomic(path, json.dumps(_finite(payload), indent=1))
    return payload


def save_grid(path: Path, taskset: Any, samples: Mapping[str, Any], n: int = 16,
              class_names: Sequence[str] | None = None, title: str | None = None) -> str:
    """A captioned PNG grid of the first ``n`` samples (every image modality side by side); returns the file name."""
    from mtd_core.training.grids import render_grid, sample_cells, save_png

    k = min(n, len(next(iter(samples.values()))))
    cut = {name: v[:k] for name, v in samples.items()}
    cells = sample_cells(taskset, cut, class_names)
    save_png(path, render_grid(cells, max(1, math.ceil(math.sqrt(k))), title=title))
    return path.name


def save_rows(path: Path, rows: Sequence[Sequence[torch.Tensor]], captions: Sequence[str], title: str) -> str:
    """A PNG grid whose cell i shows the images ``rows[j][i]`` side by side (e.g. masked | restored | true)."""
    from mtd_core.training.grids import GridCell, render_grid, save_png

    cells = [GridCell(images=[r[i] for r in rows], caption=captions[i] if i < len(captions) else "")
             for i in range(len(rows[0]))]
    save_png(path, render_grid(cells, max(1, math.ceil(math.sqrt(len(cells)))), title=title))
    return path.name
