"""Training and sampling speed of MT-Diffusion against diffusers, side by side in one process.

    OMP_NUM_THREADS=2 python benchmarks/speed.py --size 28 --batch 64 --json speed.json   (CPU: ~4 min on 2 cores)
    python benchmarks/speed.py --device cuda --bf16 --size 32 --batch 128 --json speed_cuda.json
    python benchmarks/speed.py --quick --json /tmp/speed.json                               (a smoke run, seconds)

Candidates, all at the same batch and resolution, measured interleaved (round-robin over the repeats, with the
start rotating, so load drift on a shared machine hits every candidate alike):

    train   ours single-task (image only, N = 1), ours image + label, ours image + masked image, and diffusers'
            UNet2DModel + DDPMScheduler (eps MSE) at a parameter count within 10% of ours. One step is forward,
            loss, backward and an AdamW step; images/s = batch / median step time.
    sample  DDIM, 50 steps: ours joint image + label and ours single-task (``generate(..., sampler="ddim")``)
            against diffusers' DDIMPipeline (tensor output, no PIL).

Peak memory of one more call of each candidate after timing (a training step, or a 2-step sampling run: the peak
of a sampler does not grow with its steps): CUDA from torch.cuda.max_memory_allocated; CPU from
the resident set size sampled every millisecond (approximate: allocator caching hides reuse). Data loading is left
out of every candidate (one fixed batch, the masked images derived once). Prints a table and the target ratios;
``--json`` also writes them with the machine's description and load average. The numbers are for reading; nothing
here asserts a target.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _diffusers_baseline as base  # noqa: E402  (needs diffusers: the optional extra "bench")
from _speed_timing import Candidate, Result, results_of, run_interleaved  # noqa: E402

from mtd_core.model import MultiTaskModel  # noqa: E402
from mtd_core.sampling.generate import generate  # noqa: E402
from mtd_core.taskset import TaskSet  # noqa: E402
from mtd_core.training.speed import prepare_backbone  # noqa: E402
from mtd_plugins.image import ImageModality  # noqa: E402
from mtd_plugins.label import LabelModality  # noqa: E402
from mtd_plugins.masked_image import MaskedImageModality  # noqa: E402

SIZES = (8, 28, 32)
# Per size: (channel_mult, attention_resolutions) of a small model for that resolution (docs/performance.md).
ARCH = {8: ((1, 2), ()), 28: ((1, 2, 2), (7,)), 32: ((1, 2, 2), (8,))}
FULL = {"size": 28, "batch": 64, "steps": 3, "warmup": 2, "repeats": 3, "sample_steps": 50, "channels": 32,
        "num_res_blocks": 2}
QUICK = {"size": 8, "batch": 4, "steps": 1, "warmup": 1, "repeats": 2, "sample_steps": 2, "channels": 16,
         "num_res_blocks": 1}
TARGETS = {"train_vs_diffusers": 1.0, "multitask_overhead": 0.10, "sample_vs_diffusers": 1.0}


# -- the candidates -----------------------------------------------------------------------------------------
@attrs.frozen
class Setup:
    """The run's settings, from the command line (``--help`` describes each).

    Attributes:
        device: "cpu" or "cuda".
        size: image height and width (one of SIZES).
        batch: batch size of every candidate, training and sampling.
        steps: timed training steps per candidate and repeat.
        warmup: untimed calls per candidate before timing.
        repeats: interleaved repeats (the median is reported).
        sample_steps: DDIM steps of one sampling call.
        channels, channel_mult, num_res_blocks, attention_resolutions, groups, num_heads: our U-Net's options
            (UNetConfig); the diffusers baseline mirrors them.
        threads: torch's intra-op threads.
        bf16: bfloat16 autocast around every candidate's forward passes.
        seed: seeds the data, the weights and every generator.
        quick: the smoke-run profile was used.
        compile: "off" or a torch.compile mode for every candidate's network (ours: trainer.compile's path).
        channels_last: every candidate's network and images in channels-last memory format.
        sample: whether the sampling candidates run too (``--no-sample``: training only).
    """

    device: str
    size: int
    batch: int
    steps: int
    warmup: int
    repeats: int
    sample_steps: int
    channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    groups: int
    num_heads: int
    threads: int
    bf16: bool
    seed: int
    quick: bool
    compile: str = "off"
    channels_last: bool = False
    sample: bool = True

    def backbone_options(self) -> dict[str, Any]:
        """Our U-Net's options."""
        return {"channels": self.channels, "channel_mult": list(self.channel_mult),
                "num_res_blocks": self.num_res_blocks, "attention_resolutions": list(self.attention_resolutions),
                "groups": self.groups, "num_heads": self.num_heads}


def _autocast(s: Setup) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast(torch.device(s.device).type, dtype=torch.bfloat16) if s.bf16 else contextlib.nullcontext()


def build_ours(s: Setup, extra: str | None) -> MultiTaskModel:
    """Our model: the image as the base, plus ``extra`` ("label", "masked_image" or None)."""
    mods: list[Any] = [ImageModality(role="base", channels=1, size=s.size)]
    if extra == "label":
        mods.append(LabelModality(num_classes=10))
    elif extra == "masked_image":
        mods.append(MaskedImageModality(channels=1, size=s.size, patch=4 if s.size >= 28 else 2))
    model = MultiTaskModel(TaskSet(mods), "unet", s.backbone_options()).to(s.device).train()
    prepare_backbone(model, s.compile, s.channels_last)  # the trainer's speed paths (mtd_core/training/speed.py)
    return model


def ours_train(name: str, model: MultiTaskModel, batch: dict[str, torch.Tensor], s: Setup) -> Candidate:
    """The training-step candidate of one of our models (t and eps drawn on the device, as diffusers does)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator(s.device).manual_seed(s.seed)

    def step() -> torch.Tensor:
        with _autocast(s):
            loss = model.loss(batch, generator=gen).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return Candidate(name, "train", "mtd", base.count_parameters(model), s.batch, step, step)


def ours_sample(name: str, model: MultiTaskModel, s: Setup) -> Candidate:
    """The DDIM sampling candidate of one of our models (joint generation of every modality)."""
    gen = torch.Generator(s.device).manual_seed(s.seed)

    def run(steps: int) -> Any:
        with _autocast(s):
            return generate(model, n=s.batch, sampler="ddim", steps=steps, progress=False, generator=gen).samples

    return Candidate(name, "sample", "mtd", base.count_parameters(model), s.batch,
                     lambda: run(s.sample_steps), lambda: run(min(2, s.sample_steps)))


def diffusers_candidates(unet: Any, x0: torch.Tensor, s: Setup) -> tuple[Candidate, Candidate]:
    """The diffusers training step and DDIMPipeline candidates on ``unet``."""
    train = base.DiffusersTrainStep(unet, autocast=s.bf16)
    pipe = base.ddim_pipeline(unet)
    gen_t = torch.Generator(s.device).manual_seed(s.seed)
    gen_s = torch.Generator(s.device).manual_seed(s.seed)
    n = base.count_parameters(unet)

    def step() -> Any:
        return train(x0, gen_t)

    def run(steps: int) -> Any:
        with _autocast(s):
            return base.sample_ddim(pipe, s.batch, steps, gen_s)

    return (Candidate("diffusers UNet2DModel", "train", "diffusers", n, s.batch, step, step),
            Candidate("diffusers DDIMPipeline", "sample", "diffusers", n, s.batch,
                      lambda: run(s.sample_steps), lambda: run(min(2, s.sample_steps))))


# -- report ---------------------------------------------------------------------------------------------------
@attrs.frozen
class Ratio:
    """A comparison against its target: ``met`` when ``value >= target`` (direction "min") or ``<=`` ("max").

    ``value`` compares median wall-clock times (the target's measure); ``value_best`` the fastest repeat of each
    candidate and ``value_cpu`` the median CPU times: checks that are less sensitive to other load on a shared
    machine.
    """

    name: str
    value: float
    value_best: float
    value_cpu: float
    target: float
    direction: str
    met: bool


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model, cores, threads, versions and the accelerator's name."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import diffusers

    info: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
        "diffusers": diffusers.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": str(device), "device_name": cpu,
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def ratios(res: dict[str, Result]) -> list[Ratio | None]:
    """The target comparisons: throughput ratios ours / diffusers, and the multi-task overhead (the step time of a
    multi-task model over our single-task one, minus 1)."""
    def speedup(name: str, ours: str, theirs: str, target: float) -> Ratio | None:
        if ours not in res or theirs not in res:  # --no-sample
            return None
        a, b = res[ours], res[theirs]
        value = b.median_s / a.median_s  # images per second: the same batch, so the inverse time ratio
        return Ratio(name, value, b.min_s / a.min_s, b.cpu_median_s / a.cpu_median_s, target, "min", value >= target)

    def overhead(name: str, multi: str, target: float) -> Ratio:
        a, b = res[multi], res["ours image (train)"]
        value = a.median_s / b.median_s - 1
        return Ratio(name, value, a.min_s / b.min_s - 1, a.cpu_median_s / b.cpu_median_s - 1, target, "max",
                     value <= target)

    t = TARGETS
    return [
        speedup("train: ours image+label / diffusers (images/s)", "ours image+label (train)", "diffusers UNet2DModel",
                t["train_vs_diffusers"]),
        speedup("train: ours image / diffusers (images/s)", "ours image (train)", "diffusers UNet2DModel",
                t["train_vs_diffusers"]),
        overhead("train: overhead, image+label over image (step time)", "ours image+label (train)",
                 t["multitask_overhead"]),
        overhead("train: overhead, image+masked over image (step time)", "ours image+masked (train)",
                 t["multitask_overhead"]),
        speedup("sample: ours image+label joint / diffusers (images/s)", "ours image+label (ddim)",
                "diffusers DDIMPipeline", t["sample_vs_diffusers"]),
        speedup("sample: ours image / diffusers (images/s)", "ours image (ddim)", "diffusers DDIMPipeline",
                t["sample_vs_diffusers"]),
    ]


def print_report(results: list[Result], rs: list[Ratio], match: base.ParamMatch, s: Setup) -> None:
    """The table and the ratios on stdout."""
    print(f"\nparameters: ours (image only) {match.target:,}, diffusers {match.params:,}, ratio {match.ratio:.4f} "
          f"(diffusers block_out_channels {list(match.spec.block_out_channels)}, layers_per_block "
          f"{match.spec.layers_per_block}; {match.tried} candidates searched)")
    print(f"{'candidate':<28}{'phase':>7}{'params':>11}{'ms/call':>10}{'best ms':>10}{'cpu ms':>10}{'images/s':>10}"
          f"{'peak MB':>9}")
    for r in results:
        mem = "n/a" if r.peak_delta_bytes is None else f"{r.peak_delta_bytes / 2**20:.1f}"
        print(f"{r.name:<28}{r.phase:>7}{r.params:>11,}{1000 * r.median_s:>10.1f}{1000 * r.min_s:>10.1f}"
              f"{1000 * r.cpu_median_s:>10.1f}{r.images_per_s:>10.1f}{mem:>9}")
    print(f"(train: median of {s.repeats} repeats x {s.steps} steps; sample: {s.sample_steps} DDIM steps, median of "
          f"{s.repeats}; peak MB: {results[0].memory_method}, above the level before the call)")
    print(f"  {'ratio':<56}{'median':>8}{'best':>8}{'cpu':>8}")
    for r in rs:
        rel = ">=" if r.direction == "min" else "<="
        print(f"  {r.name:<56}{r.value:>8.3f}{r.value_best:>8.3f}{r.value_cpu:>8.3f}   target {rel} {r.target:<5} "
              f"{'met' if r.met else 'MISSED'}")


# -- main -------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> tuple[Setup, Path | None]:
    """The command line as a Setup and the JSON path: the profile (full or ``--quick``) fills what is not given."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch", type=int, help="batch size of every candidate (default 64; quick 4)")
    p.add_argument("--size", type=int, choices=SIZES, help="image height and width (default 28; quick 8)")
    p.add_argument("--steps", type=int, help="timed training steps per repeat (default 3; quick 1)")
    p.add_argument("--warmup", type=int, help="untimed warm-up calls per candidate (default 2; quick 1)")
    p.add_argument("--repeats", type=int, help="interleaved repeats; the median is reported (default 3; quick 2)")
    p.add_argument("--sample-steps", type=int, help="DDIM steps of one sampling call (default 50; quick 2)")
    p.add_argument("--channels", type=int, help="our U-Net's base width (default 32; quick 16)")
    p.add_argument("--channel-mult", type=int, nargs="+", help="width multipliers per level (default by size)")
    p.add_argument("--num-res-blocks", type=int, help="residual blocks per level (default 2; quick 1)")
    p.add_argument("--attention", type=int, nargs="*", help="attention resolutions (default by size)")
    p.add_argument("--groups", type=int, default=8, help="GroupNorm groups (default 8)")
    p.add_argument("--num-heads", type=int, default=4, help="attention heads (default 4)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: OMP_NUM_THREADS, else torch's)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for every candidate's forward passes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 step: a smoke run of the whole benchmark")
    p.add_argument("--compile", default="off", help="torch.compile mode of every network (default off)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for every network")
    p.add_argument("--no-sample", action="store_true", help="time the training candidates only")
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args(argv)
    prof = QUICK if a.quick else FULL

    def pick(key: str) -> Any:
        v = getattr(a, key)
        return prof[key] if v is None else v

    size = pick("size")
    mult, attn = ARCH[size]
    threads = a.threads or int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads())
    s = Setup(device=a.device, size=size, batch=pick("batch"), steps=pick("steps"), warmup=pick("warmup"),
              repeats=pick("repeats"), sample_steps=pick("sample_steps"), channels=pick("channels"),
              channel_mult=tuple(a.channel_mult or mult), num_res_blocks=pick("num_res_blocks"),
              attention_resolutions=tuple(attn if a.attention is None else a.attention),
              groups=a.groups, num_heads=a.num_heads, threads=threads, bf16=a.bf16, seed=a.seed, quick=a.quick,
              compile=a.compile, channels_last=a.channels_last, sample=not a.no_sample)
    for key in ("batch", "steps", "repeats", "sample_steps", "channels", "threads"):
        if getattr(s, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1, got {getattr(s, key)}")
    if s.warmup < 0:
        p.error(f"--warmup must be at least 0, got {s.warmup}")
    if s.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
    return s, a.json


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the report, write the JSON if asked; returns the JSON's content."""
    s, json_path = parse_args(argv)
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    dev = torch.device(s.device)
    load_start = os.getloadavg()
    started = time.time()

    g = torch.Generator().manual_seed(s.seed)
    x0 = (torch.rand(s.batch, 1, s.size, s.size, generator=g) * 2 - 1).to(dev)
    y = torch.randint(0, 10, (s.batch,), generator=g).to(dev)
    single, with_label, with_mask = build_ours(s, None), build_ours(s, "label"), build_ours(s, "masked_image")
    masked = with_mask.taskset["masked_image"].derive({"image": x0}, torch.Generator(s.device).manual_seed(s.seed))

    try:
        match = base.match_parameters(base.mirror_spec(single.backbone.config, s.size, 1),
                                      base.count_parameters(single))
    except ValueError as e:  # a size UNet2DModel cannot handle, or no baseline of a matching size
        raise SystemExit(f"speed.py: {e}") from None
    unet = base.build_unet2d(match.spec, dev)
    prepare_backbone(unet, s.compile, s.channels_last)  # type: ignore[arg-type]  # the same speed paths as ours
    d_train, d_sample = diffusers_candidates(unet, x0, s)

    train = [ours_train("ours image (train)", single, {"image": x0}, s),
             ours_train("ours image+label (train)", with_label, {"image": x0, "label": y}, s),
             ours_train("ours image+masked (train)", with_mask, {"image": x0, "masked_image": masked}, s), d_train]
    sample = [ours_sample("ours image (ddim)", single, s), ours_sample("ours image+label (ddim)", with_label, s),
              d_sample]

    print(f"training: {len(train)} candidates x {s.repeats} repeats x {s.steps} steps", file=sys.stderr, flush=True)
    times = run_interleaved(train, s.steps, s.repeats, s.warmup, dev)
    sample = sample if s.sample else []
    print(f"sampling: {len(sample)} candidates x {s.repeats} repeats x {s.sample_steps} DDIM steps", file=sys.stderr,
          flush=True)
    times.update(run_interleaved(sample, 1, s.repeats, min(1, s.warmup), dev) if sample else {})
    results = results_of(train + sample, times, dev)
    rs = [r for r in ratios({r.name: r for r in results}) if r is not None]
    print_report(results, rs, match, s)
    load_end = os.getloadavg()
    print(f"load average (1, 5, 15 min): start {load_start}, end {load_end}; {time.time() - started:.0f} s")

    out = {
        "setup": {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.asdict(s).items()},
        "backbone_options": s.backbone_options(),
        "machine": machine_info(dev),
        "load_average": {"start": list(load_start), "end": list(load_end)},
        "param_match": {"ours": match.target, "diffusers": match.params, "ratio": match.ratio, "tried": match.tried,
                        "diffusers_spec": match.spec.to_dict(), "diffusers_kwargs": _plain(match.spec.kwargs())},
        "results": [attrs.asdict(r) for r in results],
        "ratios": [attrs.asdict(r) for r in rs],
        "wall_s": time.time() - started,
    }
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {json_path}")
    return out


def _plain(v: Any) -> Any:
    """Tuples to lists, recursively, for the JSON."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


if __name__ == "__main__":
    main()
