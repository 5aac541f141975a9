"""``mtd train CONFIG.toml --out DIR [--set key=value ...] [--resume]``: train a model from a run config.

Several processes train data-parallel when launched by torchrun:
``torchrun --nproc_per_node 2 $(which mtd) train CONFIG.toml --out DIR``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

from mtd_core.errors import ConfigError, MTDError


DEBUG_ENV = "MTD_DEBUG"


def handle_errors(command: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Turn any failure into ``mtd COMMAND: error: ...`` on stderr and exit code 1, without a traceback: an
    MTDError's own message, anything else with its type (a bug or an environment problem). With MTD_DEBUG=1 the
    exception propagates, traceback and all."""
    def wrap(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(fn)
        def run(args: argparse.Namespace) -> int:
            try:
                return fn(args)
            except MTDError as e:
                if os.environ.get(DEBUG_ENV):
                    raise
                print(f"mtd {command}: error: {e}", file=sys.stderr)
                return 1
            except Exception as e:  # noqa: BLE001 - the command line's last line of defence
                if os.environ.get(DEBUG_ENV):
                    raise
                print(f"mtd {command}: error: {type(e).__name__}: {e} (set {DEBUG_ENV}=1 for the traceback)",
                      file=sys.stderr)
                return 1
        return run
    return wrap


def check_device(device: str, option: str = "--device") -> None:
    """A ConfigError unless ``device`` can be used here (a CUDA device needs CUDA)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"{option} {device!r}: not a device ({e}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option} {device!r}: no CUDA device is available on this machine; use cpu")


def check_out_dir(path: str | Path, option: str = "--out") -> Path:
    """``path`` as a folder to write into: a ConfigError when it names an existing file."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{option} {str(out)!r} is an existing file; it must name a folder (new or existing)")
    return out


# --quick: a few steps, a tiny grid, one checkpoint at the end
QUICK = ("trainer.steps=4", "trainer.warmup_steps=1", "trainer.checkpoint_every=0", "trainer.sample_n=4",
         "trainer.sample_steps=4", "trainer.log_every=1")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mtd train``."""
    p = subparsers.add_parser("train", help="train a model from a TOML run config",
                              description="Train a multi-task diffusion model from a TOML run config "
                                          "(tables [dataset], [taskset], [backbone], [trainer]; see docs/training.md).")
    p.add_argument("config", help="the TOML run config (e.g. examples/configs/image_label.toml)")
    p.add_argument("--out", required=True, help="the run folder (checkpoints, samples, metrics.jsonl, config.json)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set trainer.steps=500 (repeatable; values are TOML)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (same as --set trainer.progress=false)")
    p.add_argument("--quick", action="store_true",
                   help=f"check a config end to end in seconds: {' '.join(QUICK)} (before --set, which can change them)")
    p.set_defaults(func=main)


@handle_errors("train")
def main(args: argparse.Namespace) -> int:
    """Run ``mtd train``."""
    from mtd_core.training import Trainer, build_run, init_distributed, read_config, shutdown_distributed
    from mtd_core.training.distributed import DistContext

    overrides = (list(QUICK) if args.quick else []) + list(args.overrides)
    overrides += ["trainer.progress=false"] if args.no_progress else []
    check_out_dir(args.out)
    config = read_config(args.config, overrides)
    if config.trainer.device != "auto":
        check_device(config.trainer.device, "trainer.device")
    ctx: DistContext = init_distributed(config.trainer.device)
    try:
        assets = None
        if args.resume:  # modalities reuse the checkpoint's assets (e.g. its tokenizer) instead of refitting
            from mtd_core.training.checkpoint import list_checkpoints, load_checkpoint

            found = list_checkpoints(Path(args.out) / "checkpoints")
            assets = load_checkpoint(found[-1], parts=("assets",)).assets if found else None
        run = build_run(config, assets=assets)
        ctx.check_same("resolved config", run.config.to_dict())
        trainer = Trainer(run.model, run.data, run.config.trainer, args.out, run_config=run.config.to_dict(),
                          resume=args.resume, dist=ctx)
        if ctx.is_main:
            n_params = sum(p.numel() for p in run.model.parameters())
            where = f" on {ctx.world_size} processes" if ctx.enabled else ""
            print(f"mtd train: {run.model.taskset!r}, {n_params / 1e6:.2f}M parameters, {trainer.device}{where}; "
                  f"{len(run.data.splits.train)} training examples; step {trainer.step} -> {run.config.trainer.steps}")
        result = trainer.fit()
        if ctx.is_main and result.status != "interrupted":
            loss = result.metrics.get("loss")
            print(f"mtd train: {result.status} at step {result.step} in {result.elapsed_s:.1f} s"
                  + (f", loss {loss:.4f}" if loss is not None else "")
                  + f", {result.examples_per_s:.0f} examples/s.\n  checkpoint: {result.checkpoint}"
                  + (f"\n  samples:    {result.grid}" if result.grid else "")
                  + f"\n  metrics:    {trainer.out_dir / 'metrics.jsonl'}")
    finally:
        shutdown_distributed(ctx)
    return 0
