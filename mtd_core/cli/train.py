"""``mtd train CONFIG.toml --out DIR [--set key=value ...] [--resume]``: train a model from a run config.

Several processes train data-parallel when launched by torchrun:
``torchrun --nproc_per_node 2 $(which mtd) train CONFIG.toml --out DIR``.

``mtd train CONFIG.toml --dry-run [--device NAME] [--device-memory GiB]`` trains nothing and writes nothing: it
prints the parameter count, the estimated memory of one step (mtd_core/training/memory.py) and step time, and
exits 1 with a ConfigError naming ``trainer.batch_size`` when the batch does not fit the device.
"""

from __future__ import annotations

import argparse
import math
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
from mtd_core.errors import ConfigError, MTDError

if TYPE_CHECKING:
    import torch

    from mtd_core.plugins.registry import Registry
    from mtd_core.taskset import TaskSet
    from mtd_core.training import Trainer
    from mtd_core.training.config import RunConfig
    from mtd_core.training.memory import MemoryEstimate, StepTiming


# --quick: a few steps, a tiny grid, one checkpoint at the end
QUICK = ("trainer.steps=4", "trainer.warmup_steps=1", "trainer.checkpoint_every=0", "trainer.sample_n=4",
         "trainer.sample_steps=4", "trainer.log_every=1")
TIME_BATCHES = (4, 16)
"""--dry-run: the batch sizes whose forward+backward passes are timed (at most the configured batch)."""
TIME_PASSES = 3
"""--dry-run: the timed passes (after one warm-up pass)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mtd train``."""
    p = subparsers.add_parser("train", help="train a model from a TOML run config",
                              description="Train a multi-task diffusion model from a TOML run config "
                                          "(tables [dataset], [taskset], [backbone], [trainer]; see docs/training.md).")
    p.add_argument("config", help="the TOML run config (e.g. examples/configs/image_label.toml)")
    p.add_argument("--out", help="the run folder (checkpoints, samples, metrics.jsonl, config.json); required "
                                 "unless --dry-run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set trainer.steps=500 (repeatable; values are TOML)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (same as --set trainer.progress=false)")
    p.add_argument("--quick", action="store_true",
                   help=f"check a config end to end in seconds: {' '.join(QUICK)} (before --set, which can change them)")
    p.add_argument("--dry-run", action="store_true",
                   help="train nothing, write nothing: print the parameter count, the estimated memory per step and "
                        "step time, and exit 1 if the batch does not fit the device's memory")
    p.add_argument("--device", metavar="NAME",
                   help="with --dry-run: the device to check against (default: trainer.device; auto = cuda if "
                        "available, else cpu)")
    p.add_argument("--device-memory", metavar="GiB",
                   help="with --dry-run: the device's memory in GiB instead of what it has free (e.g. --device cuda "
                        "--device-memory 80, with or without CUDA here)")
    p.add_argument("--device-tflops", metavar="TFLOPS", type=float,
                   help="with --dry-run on a device this machine does not have: its sustained TFLOP/s, for the "
                        "step-time estimate from counted FLOPs (default: 40%% of an H100's peak)")
    p.set_defaults(func=main, train_parser=p)


@handle_errors("train")
def main(args: argparse.Namespace) -> int:
    """Run ``mtd train``."""
    from mtd_core.training import Trainer, build_run, init_distributed, read_config, shutdown_distributed
    from mtd_core.training.distributed import DistContext

    if args.dry_run:
        return dry_run(args)
    if args.out is None:
        args.train_parser.error("the following arguments are required: --out (unless --dry-run)")
    for option, value in (("--device", args.device), ("--device-memory", args.device_memory),
                          ("--device-tflops", args.device_tflops)):
        if value is not None:
            raise ConfigError(f"{option} goes with --dry-run only; training uses trainer.device "
                              "(--set trainer.device=NAME)")
    overrides = _overrides(args)
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


def _overrides(args: argparse.Namespace) -> list[str]:
    """--quick's settings, then every --set, then --no-progress's."""
    overrides = (list(QUICK) if args.quick else []) + list(args.overrides)
    return overrides + (["trainer.progress=false"] if args.no_progress else [])


def dry_run(args: argparse.Namespace) -> int:
    """``mtd train --dry-run``: the parameter count, the estimated memory and time of one step, and whether the
    configured batch fits the device (exit 0) or not (a ConfigError naming ``trainer.batch_size``, exit 1)."""
    from mtd_core.plugins.registry import get_registry
    from mtd_core.training.config import read_config, resolve_config
    from mtd_core.training.memory import available_memory, check_estimate, ema_copies, estimate_batch_memory

    if args.resume:
        raise ConfigError("--resume does not go with --dry-run (a dry run reads no checkpoint and trains nothing)")
    given = _device_memory(args.device_memory)
    if args.out is not None:
        check_out_dir(args.out)  # checked as training would; nothing is written there
    registry = get_registry()
    config = resolve_config(read_config(check_config_file(args.config), _overrides(args)), registry)
    dev, present = _dry_device(args.device, config.trainer.device, given is not None)
    taskset, data_note = _sized_taskset(config, registry)
    est = estimate_batch_memory(config, registry, taskset=taskset)
    available, where = (given, "given by --device-memory") if given is not None else available_memory(dev)
    _print_memory(args.config, taskset, est, data_note, dev, available, where, ema_copies(config.trainer))
    if present:
        line = _step_time(config, taskset, est, dev, registry)
    else:
        line = _counted_step_time(config, taskset, registry, args.device_tflops)  # no such device here
    print(f"  step time    {line}")
    fits = est.total_bytes <= available
    print(f"  result       the batch of {config.trainer.batch_size} {'fits' if fits else 'does NOT fit'} {dev} "
          f"({_size(est.total_bytes)} estimated of {_size(available)})", flush=True)
    check_estimate(est, config.trainer.batch_size, available, where)
    return 0


def _counted_step_time(config: RunConfig, taskset: TaskSet, registry: Registry, tflops: float | None) -> str:
    """The step time of a device that is not here: the backbone's FLOPs counted on the meta device, at the device's
    sustained rate (--device-tflops) or a stated reference rate (mtd_core/training/flops.py)."""
    from mtd_core.training.flops import estimate_step_time, step_flops_per_example

    if tflops is not None and not (math.isfinite(tflops) and tflops > 0):
        raise ConfigError(f"--device-tflops {tflops!r}: expected the device's sustained TFLOP/s, a number above 0")
    per_example = step_flops_per_example(config, registry, taskset)
    estimate = estimate_step_time(per_example, config.trainer.batch_size, config.trainer.bf16, tflops)
    return f"not measured (no such device here); {estimate.sentence()}"


def _device_memory(text: str | None) -> int | None:
    """--device-memory GiB as bytes (None when not given): a ConfigError unless a finite number above 0."""
    if text is None:
        return None
    try:
        gib = float(text)
    except ValueError:
        gib = math.nan
    if not (math.isfinite(gib) and gib > 0):
        raise ConfigError(f"--device-memory {text!r}: expected the device's memory in GiB, a number above 0 "
                          "(e.g. --device-memory 80)")
    return int(gib * 2**30)


def _dry_device(name: str | None, configured: str, memory_given: bool) -> tuple[torch.device, bool]:
    """The device --dry-run checks (--device, else trainer.device; "auto": CUDA when available) and whether it is
    on this machine; a ConfigError naming the option when it is not a device, or absent without --device-memory."""
    import torch

    option = "--device" if name is not None else "trainer.device"
    value = name if name is not None else configured
    if value == "auto":
        value = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"{option} {value!r}: not a device ({e}); use cpu, cuda or cuda:N") from None
    cuda_here = dev.type == "cuda" and torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()
    present = dev.type == "cpu" or cuda_here
    if not present and not memory_given:
        raise ConfigError(f"{option} {value!r}: no such device on this machine; give its memory with "
                          "--device-memory GiB to check against it from here (e.g. --device cuda --device-memory 80)")
    return dev, present


def _sized_taskset(config: RunConfig, registry: Registry) -> tuple[TaskSet, str]:
    """The run's task set, ready to build the model, and a note on what data was read: none, unless a modality
    needs fitting on the data first (a tokenizer), which reads the dataset and fits as training does."""
    import torch

    from mtd_core.model import MultiTaskModel
    from mtd_core.taskset import TaskSet

    taskset = TaskSet.from_config(config.taskset, registry)
    options = dict(config.backbone)
    name = str(options.pop("name"))
    try:
        with torch.device("meta"):
            MultiTaskModel(taskset, name, options, registry=registry)
        return taskset, "counted on torch's meta device; no data read"
    except MTDError:  # a data-dependent modality (a text tokenizer) is not fitted yet
        pass
    from mtd_core.data.build import load_dataset
    from mtd_core.training.run import fit_batches

    batches = list(fit_batches(load_dataset(config.dataset, registry)))
    for m in taskset.modalities.values():
        m.fit(batches)
    with torch.device("meta"):  # now it must build; an error here is the config's
        MultiTaskModel(taskset, name, options, registry=registry)
    n = sum(len(next(iter(b.values()))) for b in batches if b)
    return taskset, (f"counted on torch's meta device, after fitting the data-dependent modalities on the first {n} "
                     "training examples, as training does")


def _size(n: float) -> str:
    """Bytes as KiB, MiB, GiB or TiB, 3 significant digits."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n / 2**10:.3g} KiB"


def _print_memory(config_path: str, taskset: TaskSet, est: MemoryEstimate, data_note: str, dev: torch.device,
                  available: float, where: str, emas: int) -> None:
    """The dry run's header, parameter count and memory estimate."""
    from mtd_core.training.memory import OPTIMIZER_COPIES, largest_fitting_batch

    copies = OPTIMIZER_COPIES + emas
    fitting = largest_fitting_batch(est, available)
    print("\n".join([
        f"mtd train --dry-run: {config_path} (nothing trained, nothing written)",
        f"  task set     {taskset!r}",
        f"  parameters   {est.parameters:,} ({est.parameters / 1e6:.2f}M; {data_note})",
        ("  memory       estimated peak of one step of one process (an estimate within a small factor: parameters "
         "counted, the activations autograd saves for backward measured on torch's meta device)"),
        (f"    weights, gradients, AdamW{', EMA' if emas else ''}: {_size(est.fixed_bytes)} ({copies} float32 copies "
         "of the parameters)"),
        (f"    per example: {_size(est.per_example_bytes)} (activations {_size(est.activation_bytes)}, latents and "
         f"their gradients {_size(est.latent_bytes)}, data {_size(est.data_bytes)})"),
        f"    {_batch_words(est)}: {_size(est.total_bytes)} (fixed + {est.batch_size} x per example)",
        f"  device       {dev}: {_size(available)} ({where}); a {'micro-' if est.accumulate > 1 else ''}batch of at "
        f"most about {fitting:,} fits"]))


def _batch_words(est: MemoryEstimate) -> str:
    """``the batch of 64``, or ``a micro-step of 16 (trainer.accumulate = 4)`` with gradient accumulation."""
    if est.accumulate > 1:
        return f"a micro-step of {est.batch_size} (trainer.accumulate = {est.accumulate})"
    return f"the batch of {est.batch_size}"


def _step_time(config: RunConfig, taskset: TaskSet, est: MemoryEstimate, dev: torch.device,
               registry: Registry) -> str:
    """The estimated step time, measured on ``dev`` and extrapolated to the batch, as a sentence saying how; or why
    it was not measured (the model and a small batch would not fit the memory free here)."""
    import torch

    from mtd_core.model import MultiTaskModel
    from mtd_core.training.memory import available_memory, time_forward_backward

    sizes = sorted({min(b, est.batch_size) for b in TIME_BATCHES})
    free, _ = available_memory(dev)
    if est.fixed_bytes + sizes[-1] * est.per_example_bytes > free:
        return (f"not measured: the model and a batch of {sizes[-1]} would not fit the {_size(free)} free on {dev} "
                "here")
    threads = torch.get_num_threads()
    if dev.type == "cpu" and config.trainer.threads > 0:
        torch.set_num_threads(config.trainer.threads)  # as training would
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.trainer.seed)
            options = dict(config.backbone)
            model = MultiTaskModel(taskset, str(options.pop("name")), options, registry=registry)
        timings = [time_forward_backward(model, b, dev, kind=config.trainer.loss, bf16=config.trainer.bf16,
                                         passes=TIME_PASSES, seed=config.trainer.seed) for b in sizes]
    finally:
        torch.set_num_threads(threads)
    return _timing_sentence(timings, est.batch_size, est.accumulate, config.trainer.bf16)


def _timing_sentence(timings: list[StepTiming], batch: int, accumulate: int, bf16: bool) -> str:
    """``about 0.12 s per step of 64 (an estimate: ...how it was measured...)``."""
    from mtd_core.training.memory import extrapolate_seconds

    first = timings[0]
    where = (f"this machine's CPU ({first.threads} thread{'s' if first.threads != 1 else ''})"
             if first.device == "cpu" else f"{first.device} here")
    measured = " and ".join(f"{t.seconds:.3g} s at {t.batch_size}" for t in timings)
    how = ("the line through them (a fixed cost per pass plus one per example) extrapolated" if len(timings) > 1
           else "scaled in proportion")
    steps = f" x {accumulate} micro-steps" if accumulate > 1 else ""
    return (f"about {accumulate * extrapolate_seconds(timings, batch):.3g} s per step of {batch}{steps}. An estimate: "
            f"the fastest of {first.passes} forward+backward passes (after a warm-up pass) of synthetic batches on "
            f"{where}{' under bf16 autocast' if bf16 else ''} ({measured}), {how} to {batch}; the optimizer step, the "
            "EMA update and data loading are not included")
