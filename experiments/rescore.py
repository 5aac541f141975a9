"""Recompute measurements of finished runs with the current protocol and update their result JSON in place.

- ``elbo``: the ELBO sums T - 1 very uneven per-timestep terms, estimated from ``elbo_timesteps`` stratified
  timesteps per example (mtd_core.diffusion.elbo.stratified_timesteps). Rescore after changing that estimator,
  ``elbo_n`` or ``elbo_timesteps``.
- ``eta1``: the metrics of samples drawn with DDIM eta 1 (``common.stochastic_metrics``), for results written
  before every experiment reported them.

Either way every result of a preset is then measured the same way. Runs of mtd models are reloaded from their run
folders (EMA weights); the diffusers baseline keeps no checkpoint and is listed as skipped.

    python -m experiments.rescore --preset digits --what elbo eta1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from experiments import common
from experiments.presets import Preset, get_preset
from mtd_core.errors import MTDError


def _elbo(loaded: Any, preset: Preset, seed: int, data: dict[str, Any]) -> dict[str, float]:
    from mtd_core.training import load_run_data

    data["preset_config"] = {**data.get("preset_config", {}), **{k: v for k, v in preset.to_dict().items()
                                                                 if k.startswith("elbo_")}}
    return common.elbo_bits_per_dim(loaded.model, load_run_data(loaded), preset, seed)


def _eta1(loaded: Any, preset: Preset, seed: int, data: dict[str, Any]) -> dict[str, float]:
    from mtd_core.training import load_run_data

    ev = common.make_evaluator(load_run_data(loaded), preset)
    data["protocol"].update(common.sampler_protocol(preset))
    return common.stochastic_metrics(ev, loaded.model, preset, seed)


MEASURES: dict[str, Callable[[Any, Preset, int, dict[str, Any]], dict[str, float]]] = {"elbo": _elbo, "eta1": _eta1}


def rescore(result: Path, run_dir: Path, preset: Preset, what: str = "elbo") -> dict[str, float]:
    """Recompute the measure ``what`` of the run in ``run_dir`` and write it into ``result``; returns its metrics."""
    from mtd_core.training import load_run, write_atomic

    if what not in MEASURES:
        raise MTDError(f"rescore: unknown measure {what!r}; expected one of {list(MEASURES)}")
    data = json.loads(result.read_text(encoding="utf-8"))
    loaded = load_run(run_dir, device=common.device_of(preset))
    metrics = MEASURES[what](loaded, preset, int(data["seed"]), data)
    data["metrics"].update(metrics)
    data["protocol"][f"{what}_rescored_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_atomic(result, json.dumps(data, indent=1))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.rescore``."""
    p = argparse.ArgumentParser(prog="python -m experiments.rescore", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True, help="the preset whose results are rescored")
    p.add_argument("--what", nargs="+", choices=list(MEASURES), required=True, help="the measures to recompute")
    p.add_argument("--experiment", nargs="*", default=None, help="only these experiments (default: all)")
    p.add_argument("--results", type=Path, default=common.DEFAULT_RESULTS)
    p.add_argument("--work", type=Path, default=common.DEFAULT_WORK)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the preset's)")
    args = p.parse_args(argv)
    try:
        preset = get_preset(args.preset)
        if args.threads is not None:
            preset = preset.with_overrides(threads=args.threads)
        if preset.threads:
            torch.set_num_threads(preset.threads)
        for result in sorted((args.results / preset.name).glob("*/seed*.json")):
            experiment, seed = result.parent.name, result.stem.removeprefix("seed")
            if args.experiment and experiment not in args.experiment:
                continue
            run_dir = args.work / preset.name / experiment / f"seed{seed}"
            if not (run_dir / "checkpoints").is_dir():
                print(f"{result}: skipped (no run folder {run_dir} with checkpoints)")
                continue
            for what in args.what:
                print(f"{result}: {what}", flush=True)
                rescore(result, run_dir, preset, what)
    except MTDError as e:
        print(f"experiments.rescore: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
