"""The command line every experiment script shares: ``python -m experiments.<name> --preset P --seed S
[--split val|test] ...`` trains (or reuses) the setting's runs, evaluates them on the split and writes the result
JSON (experiments/results.py). Also :func:`parse_setting`, the ``key=value,...`` syntax of the design options and of
the sampler study's settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from experiments import evaluation
from experiments.presets import PRESETS, Preset, get_preset
from experiments.results import DEFAULT_RESULTS, Outcome, command_line, result_path, write_result
from experiments.runs import (DEFAULT_WORK, DESIGN, REUSE, TrainedOnly, TrainingInterrupted,
                              check_data)
from mtd_core.errors import ConfigError, MTDError
from mtd_core.taskset import AUX_EPS as AUX_EPS_CHOICES, ENCODING_SCALES
from mtd_core.training.config import GRAD_CLIP_SCOPES

RunFn = Callable[[Preset, int, Path, Path], Outcome]
KeysFn = Callable[[Preset], Sequence[str]]
DESIGN_OPTIONS = ("aux_channels", "weights", "aggregated", "known_input", "known_dropout", "aux_eps",
                  "encoding_scale", "grad_clip_scope")


def parse_setting(text: str) -> dict[str, Any]:
    """``"sampler=ddim,nfe=20,eta=1"`` -> {"sampler": "ddim", "nfe": 20, "eta": 1} (values as ``mtd sample
    --option`` reads them)."""
    from mtd_core.cli.sample import parse_value

    out: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"setting {text!r}: expected key=value pairs, got {part!r}")
        if key == "encoding_temperature":  # name:tau[;name:tau], e.g. encoding_temperature=text:0.5
            pairs = [item.partition(":") for item in value.split(";")]
            if not all(sep and name for name, sep, _ in pairs):
                raise ConfigError(f"setting {text!r}: encoding_temperature takes name:tau[;name:tau], got {value!r}")
            out[key] = {name: parse_value(tau) for name, _, tau in pairs}
        else:
            out[key] = parse_value(value)
    return out


def _parser(experiment: str, description: str) -> argparse.ArgumentParser:
    """The experiment scripts' argument parser."""
    p = argparse.ArgumentParser(prog=f"python -m experiments.{experiment}", description=description)
    p.add_argument("--preset", default="cpu", help=f"one of {list(PRESETS)} (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seeds weights, data order, noise and sampling (default 0)")
    p.add_argument("--split", choices=evaluation.SPLITS, default="val",
                   help="the evaluation split (default val: the held-out validation split; test for the claims)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help=f"results folder (default {DEFAULT_RESULTS})")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"run folders (default {DEFAULT_WORK})")
    p.add_argument("--steps", type=int, default=None, help="override the preset's training steps (recorded)")
    p.add_argument("--threads", type=int, default=None,
                   help="override the preset's torch CPU threads, e.g. 1 to run two experiments side by side")
    p.add_argument("--reuse", action="store_true",
                   help="evaluate a finished run of the identical config found in --work instead of retraining "
                        "(resume one stopped part-way)")
    p.add_argument("--train-only", action="store_true",
                   help="train (into --work) and stop before the evaluation; evaluate later with --reuse")
    p.add_argument("--variant", default="", help="name a design study (needs at least one of the design options below)")
    p.add_argument("--aux-channels", type=int, default=None, help="the task set's aux_channels (design study)")
    p.add_argument("--weights", default=None, help="the aggregated weight schedule as kind=...,key=value,...")
    p.add_argument("--aggregated", default=None, help="further aggregated-modality options as key=value,...")
    p.add_argument("--known-input", choices=("true", "false"), default=None,
                   help="the task set's known_input (design study)")
    p.add_argument("--known-dropout", type=float, default=None,
                   help="the task set's known_dropout (design study; with known_input)")
    p.add_argument("--aux-eps", choices=AUX_EPS_CHOICES, default=None,
                   help="the task set's aux_eps (design study; with auxiliary channels)")
    p.add_argument("--encoding-scale", choices=ENCODING_SCALES, default=None,
                   help="the task set's encoding_scale (design study)")
    p.add_argument("--grad-clip-scope", choices=GRAD_CLIP_SCOPES, default=None,
                   help="the trainer's grad_clip_scope (design study)")
    return p


def _set_design(args: argparse.Namespace) -> None:
    """DESIGN from the design options (a ConfigError when they and ``--variant`` do not come together)."""
    given = {k: getattr(args, k) for k in DESIGN_OPTIONS}
    designed = any(v is not None and v != "" for v in given.values())
    if designed != bool(args.variant):
        raise ConfigError("--variant goes with --aux-channels, --weights, --aggregated, --known-input, "
                          "--known-dropout, --aux-eps, --encoding-scale or --grad-clip-scope")
    DESIGN.update(variant=args.variant, aux_channels=args.aux_channels,
                  weights=parse_setting(args.weights) if args.weights else None,
                  aggregated=parse_setting(args.aggregated) if args.aggregated else {},
                  known_input=None if args.known_input is None else args.known_input == "true",
                  known_dropout=args.known_dropout, aux_eps=args.aux_eps, encoding_scale=args.encoding_scale,
                  grad_clip_scope=args.grad_clip_scope)


def _preset(args: argparse.Namespace) -> Preset:
    """The preset with the command line's overrides (steps, threads)."""
    preset = get_preset(args.preset)
    if args.steps is not None:
        preset = preset.with_overrides(steps=args.steps, curve_every=max(1, min(preset.curve_every, args.steps)))
    if args.threads is not None:
        preset = preset.with_overrides(threads=args.threads)
    return preset


def main(experiment: str, description: str, run: RunFn, metric_keys: KeysFn,
         argv: Sequence[str] | None = None) -> int:
    """The command line shared by every experiment script."""
    args = _parser(experiment, description).parse_args(argv)
    REUSE["finished_runs"] = args.reuse
    REUSE["train_only"] = args.train_only
    command = command_line(experiment, argv)
    try:
        _set_design(args)
        return run_experiment(experiment, run, metric_keys, _preset(args), args.seed, args.results, args.work,
                              split=args.split, command=command)
    except TrainedOnly as done:
        print(f"experiments.{experiment}: trained {done}; evaluate it with --reuse", flush=True)
        return 0
    except TrainingInterrupted as stop:
        print(f"experiments.{experiment}: interrupted: the training of {stop} stopped with a checkpoint; nothing "
              "was evaluated or written; run the same command with --reuse to resume it", file=sys.stderr)
        return 130
    except (MTDError, ConfigError) as e:
        print(f"experiments.{experiment}: error: {e}", file=sys.stderr)
        return 2


def run_experiment(experiment: str, run: RunFn, metric_keys: KeysFn, preset: Preset, seed: int,
                   results: Path, work: Path, *, split: str = "val", command: str | None = None) -> int:
    """Check the data and the split, run ``run``, time it and write its JSON (checked against
    ``metric_keys(preset)``) to ``<results>/<preset>/<experiment>[/variants/NAME]/<split>/seed<S>.json``."""
    if not REUSE["train_only"]:  # training alone reads no evaluation split
        evaluation.check_split(preset, split)
    check_data(preset)
    if preset.threads:
        torch.set_num_threads(preset.threads)
    variant = f"variants/{DESIGN['variant']}" if DESIGN["variant"] else ""
    out = result_path(results, preset.name, f"{experiment}/{variant}" if variant else experiment, seed, split)
    run_dir = work / preset.name / experiment / variant / f"seed{seed}"
    print(f"experiments.{experiment}: preset {preset.name}, seed {seed}, split {split}"
          f"{', variant ' + variant if variant else ''}", flush=True)
    evaluation.EVALUATION["split"] = split
    evaluation.NFE_SPENT.clear()
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    outcome = run(preset, seed, out.parent, run_dir)
    wall = time.perf_counter() - start
    if not outcome.config and (run_dir / "config.json").is_file():
        outcome = attrs.evolve(outcome, config=json.loads((run_dir / "config.json").read_text(encoding="utf-8")))
    command = command or command_line(experiment, ["--preset", preset.name, "--seed", str(seed), "--split", split])
    write_result(out, experiment, preset, seed, outcome, wall, metric_keys(preset), split=split,
                 nfe_spent=evaluation.NFE_SPENT, command=command)
    print(f"experiments.{experiment}: wrote {out} ({wall:.0f} s)", flush=True)
    return 0
