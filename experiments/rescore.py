"""Recompute measurements of finished runs with the current protocol and update their result JSON in place.

- ``elbo``: the ELBO sums T - 1 very uneven per-timestep terms, estimated from ``elbo_timesteps`` stratified
  timesteps per example (mtd_core.diffusion.elbo.stratified_timesteps). Rescore after changing that estimator,
  ``elbo_n`` or ``elbo_timesteps``.
- ``eta1``: the metrics of samples drawn with DDIM eta 1 (``common.stochastic_metrics``, with the experiment's
  ``joint_measures``, and the learning curve's eta-1 points), for results written before every experiment reported
  them.
- ``curve``: the whole learning curve (both samplers) of the experiments that keep one (single_task, masked_image).
- ``restoration``: restoration at every mask ratio, as generated and with the observed pixels pasted back
  (masked_image, and the SDEdit baseline of single_task); their grids are rewritten too.

Either way every result of a preset is then measured the same way. Runs of mtd models are reloaded from their run
folders (EMA weights); the diffusers baseline keeps no checkpoint and is listed as skipped, as is an experiment
without the measure.

    python -m experiments.rescore --preset digits --what elbo eta1
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from experiments import common
from experiments.presets import Preset, get_preset
from mtd_core.errors import MTDError


@attrs.frozen
class Target:
    """One finished run to rescore.

    Attributes:
        module: its experiment's module (experiments.<name>).
        loaded: the run reloaded from its folder (EMA weights).
        preset: the preset it is measured with.
        run_dir: its run folder (checkpoints).
        result: its result JSON (grids are written beside it).
        data: the result JSON's content, updated in place.
    """

    module: Any
    loaded: Any
    preset: Preset
    run_dir: Path
    result: Path
    data: dict[str, Any]

    @property
    def seed(self) -> int:
        """The run's seed (every measure samples with it)."""
        return int(self.data["seed"])

    def evaluator(self) -> common.Evaluator:
        """The feature network and reference features of the run's dataset."""
        from mtd_core.training import load_run_data

        return common.make_evaluator(load_run_data(self.loaded), self.preset)


Measure = Callable[[Target], "dict[str, float] | None"]
"""A target -> its new metrics, or None when its experiment has no such measure. It may update ``target.data``."""


def _elbo(t: Target) -> dict[str, float]:
    from mtd_core.training import load_run_data

    t.data["preset_config"] = {**t.data.get("preset_config", {}),
                               **{k: v for k, v in t.preset.to_dict().items() if k.startswith("elbo_")}}
    return common.elbo_bits_per_dim(t.loaded.model, load_run_data(t.loaded), t.preset, t.seed)


def _eta1(t: Target) -> dict[str, float]:
    t.data["protocol"].update(common.sampler_protocol(t.preset))
    ev = t.evaluator()
    metrics = common.stochastic_metrics(ev, t.loaded.model, t.preset, t.seed, getattr(t.module, "joint_measures", None))
    if t.data.get("curve"):  # the eta-1 points of the learning curve, beside its eta-0 points
        stochastic = {common.STOCHASTIC: common.CURVE_SAMPLERS[common.STOCHASTIC]}
        new = common.learning_curve(t.run_dir, t.preset, ev, t.seed, stochastic)
        old = t.data["curve"]
        if [p["step"] for p in new] != [p["step"] for p in old]:
            raise MTDError(f"{t.result}: its learning curve has the steps {[p['step'] for p in old]} but the "
                           f"checkpoints of {t.run_dir} the steps {[p['step'] for p in new]}; rescore --what curve")
        t.data["curve"] = [{**o, **n} for o, n in zip(old, new)]
        metrics.update(common.curve_metrics(t.data["curve"]))
    return metrics


def _curve(t: Target) -> dict[str, float] | None:
    if not t.data.get("curve"):
        return None
    t.data["curve"] = common.learning_curve(t.run_dir, t.preset, t.evaluator(), t.seed)
    return common.curve_metrics(t.data["curve"])


def _restoration(t: Target) -> dict[str, float] | None:
    if not hasattr(t.module, "restoration"):
        return None
    metrics, _ = t.module.restoration(t.loaded.model, t.evaluator(), t.preset, t.result.parent, t.seed)
    t.data["protocol"].update(common.RESTORATION_PROTOCOL)
    return metrics


MEASURES: dict[str, Measure] = {"elbo": _elbo, "eta1": _eta1, "curve": _curve, "restoration": _restoration}


def rescore(result: Path, run_dir: Path, preset: Preset, what: str = "elbo") -> dict[str, float] | None:
    """Recompute the measure ``what`` of the run in ``run_dir`` and write it into ``result``; returns its metrics,
    or None (and leaves ``result`` as it is) when the run's experiment has no such measure."""
    from mtd_core.training import load_run, write_atomic

    if what not in MEASURES:
        raise MTDError(f"rescore: unknown measure {what!r}; expected one of {list(MEASURES)}")
    data = json.loads(result.read_text(encoding="utf-8"))
    module = importlib.import_module(f"experiments.{data['experiment']}")
    loaded = load_run(run_dir, device=common.device_of(preset))
    metrics = MEASURES[what](Target(module=module, loaded=loaded, preset=preset, run_dir=run_dir, result=result,
                                    data=data))
    if metrics is None:
        return None
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
    p.add_argument("--seed", nargs="*", type=int, default=None, help="only these seeds (default: all)")
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
            if (args.experiment and experiment not in args.experiment) or (args.seed and int(seed) not in args.seed):
                continue
            run_dir = args.work / preset.name / experiment / f"seed{seed}"
            if not (run_dir / "checkpoints").is_dir():
                print(f"{result}: skipped (no run folder {run_dir} with checkpoints)")
                continue
            for what in args.what:
                print(f"{result}: {what}", flush=True)
                if rescore(result, run_dir, preset, what) is None:
                    print(f"{result}: skipped ({experiment} has no measure {what!r})")
    except MTDError as e:
        print(f"experiments.rescore: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
