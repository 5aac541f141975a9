"""``mtd train CONFIG.toml --out DIR [--set key=value ...] [--resume]``: train a model from a run config.

Several processes train data-parallel when launched by torchrun:
``torchrun --nproc_per_node 2 $(which mtd) train CONFIG.toml --out DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

# handle_errors, check_device and check_out_dir are imported from here too (their home is mtd_core.cli.common)
from mtd_core.cli.common import (  # noqa: F401
    DEBUG_ENV,
    check_config_file,
    check_device,
    check_out_dir,
    handle_errors,
)

if TYPE_CHECKING:
    from mtd_core.training import Trainer


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
    config = read_config(check_config_file(args.config), overrides)
    if config.trainer.device != "auto":
        check_device(config.trainer.device, "trainer.device")
    ctx: DistContext = init_distributed(config.trainer.device)
    try:
        assets = None
        if args.resume:  # modalities reuse the checkpoint's assets (e.g. its tokenizer) instead of refitting
            from mtd_core.training.checkpoint import list_checkpoints, load_checkpoint, recover_run

            if ctx.is_main:  # a kill's leftovers put back or removed (and said) before the checkpoints are listed
                recover_run(args.out)
            ctx.barrier()
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
        try:
            result = trainer.fit()
        except KeyboardInterrupt:
            saved = _final_checkpoint(trainer)
            if saved is None:  # the run's end is not saved: the Ctrl-C ends the command (status 130)
                raise
            if ctx.is_main:  # Ctrl-C while drawing the final sample grid, the checkpoint already written
                print(f"mtd train: interrupted after the last step; checkpoint of step {trainer.step} saved to "
                      f"{saved}; the final sample grid was skipped.", flush=True)
            return 0
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


def _final_checkpoint(trainer: Trainer) -> Path | None:
    """The complete checkpoint of the run's last step (``trainer.steps`` reached and saved), or None."""
    from mtd_core.training.checkpoint import checkpoint_step, list_checkpoints

    found = list_checkpoints(trainer.checkpoint_dir)
    if trainer.step != trainer.config.steps or not found or checkpoint_step(found[-1]) != trainer.step:
        return None
    return found[-1]
