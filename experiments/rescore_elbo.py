"""Recompute the ELBO of finished runs with the current ELBO protocol and update their result JSON in place.

The ELBO sums T - 1 very uneven per-timestep terms, estimated from ``elbo_timesteps`` stratified timesteps per
example (mtd_core.diffusion.elbo.stratified_timesteps). Use this after changing that estimator, ``elbo_n`` or
``elbo_timesteps`` so that every result of a preset is measured the same way. Runs of mtd models are reloaded from
their run folders (EMA weights); the diffusers baseline keeps no checkpoint and is listed as skipped.

    python -m experiments.rescore_elbo --preset digits
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from experiments import common
from experiments.presets import Preset, get_preset
from mtd_core.errors import MTDError


def rescore(result: Path, run_dir: Path, preset: Preset) -> dict[str, float]:
    """Recompute the ELBO of the run in ``run_dir`` and write it into ``result``; returns the new ELBO metrics."""
    from mtd_core.training import load_run, load_run_data, write_atomic

    data = json.loads(result.read_text(encoding="utf-8"))
    loaded = load_run(run_dir, device=common.device_of(preset))
    elbo = common.elbo_bits_per_dim(loaded.model, load_run_data(loaded), preset, int(data["seed"]))
    data["metrics"].update(elbo)
    data["protocol"]["elbo_rescored_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data["preset_config"] = {**data.get("preset_config", {}), **{k: v for k, v in preset.to_dict().items()
                                                                 if k.startswith("elbo_")}}
    write_atomic(result, json.dumps(data, indent=1))
    return elbo


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.rescore_elbo``."""
    p = argparse.ArgumentParser(prog="python -m experiments.rescore_elbo", description=__doc__)
    p.add_argument("--preset", required=True, help="the preset whose results are rescored")
    p.add_argument("--results", type=Path, default=common.DEFAULT_RESULTS)
    p.add_argument("--work", type=Path, default=common.DEFAULT_WORK)
    args = p.parse_args(argv)
    try:
        preset = get_preset(args.preset)
        for result in sorted((args.results / preset.name).glob("*/seed*.json")):
            experiment, seed = result.parent.name, result.stem.removeprefix("seed")
            run_dir = args.work / preset.name / experiment / f"seed{seed}"
            if not (run_dir / "checkpoints").is_dir():
                print(f"{result}: skipped (no run folder {run_dir} with checkpoints)")
                continue
            print(f"{result}:", flush=True)
            rescore(result, run_dir, preset)
    except MTDError as e:
        print(f"experiments.rescore_elbo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
