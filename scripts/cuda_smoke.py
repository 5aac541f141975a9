"""CUDA smoke test: train an image + label model for a few steps under bf16 autocast, then sample with DDPM and DDIM.

Checks that every loss and every sample is finite and valid, and prints timings. Exits 0 with a message when no CUDA
device exists, 1 when a check fails.

    python scripts/cuda_smoke.py [--steps 50] [--batch 128] [--size 28] [--samples 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    _sync()
    start = time.perf_counter()
    out = fn()
    _sync()
    return out, time.perf_counter() - start


def _digits(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits in [-1, 1], resized to ``size`` (28 exercises the odd 7x7 level of the U-Net)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)
    return x.to(device), torch.tensor(d.target, dtype=torch.int64, device=device)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="training steps (default 50)")
    parser.add_argument("--batch", type=int, default=128, help="training batch size (default 128)")
    parser.add_argument("--size", type=int, default=28, help="image size: 8, 28 or 32 (default 28)")
    parser.add_argument("--samples", type=int, default=64, help="samples per generation call (default 64)")
    parser.add_argument("--device", default="cuda",
                        help="cuda (default); 'cpu' runs the same checks with CPU bf16 autocast, to debug the script")
    return parser.parse_args(argv)


def _model(size: int, device: torch.device) -> Any:
    """An image + label model with a small U-Net (attention at the second level's height)."""
    from mtd_core.backbones.unet_config import level_heights
    from mtd_core.model import MultiTaskModel
    from mtd_core.taskset import TaskSet

    levels = {8: [1, 2], 28: [1, 2, 2], 32: [1, 2, 2]}.get(size, [1, 2, 2])
    taskset = TaskSet.from_config({"modalities": [{"kind": "image", "role": "base", "size": size},
                                                  {"kind": "label", "num_classes": 10}]})
    attn = level_heights(size, len(levels))[1:2]
    return MultiTaskModel(taskset, "unet", {"channels": 64, "channel_mult": levels, "num_res_blocks": 2,
                                            "attention_resolutions": attn, "groups": 32}).to(device)


def _train(model: Any, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, g: torch.Generator) -> list[float]:
    """``steps`` AdamW steps under bf16 autocast on random batches of (x, y); the losses."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), device=x.device, generator=g)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = model.loss({"image": x[idx], "label": y[idx]}, generator=g)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    return losses


def _sample_checks(model: Any, x: torch.Tensor, n: int) -> list[str]:
    """Sample in every mode under bf16 autocast, print timings; the failures (non-finite or invalid samples)."""
    from mtd_core.sampling import GuidanceConfig, generate

    device = x.device
    runs = {
        "ddpm joint, 100 steps": dict(n=n, sampler="ddpm", steps=100),
        "ddim joint, 50 steps": dict(n=n, sampler="ddim", steps=50),
        "ddim eta=1 label-conditioned": dict(given={"label": torch.arange(n, device=device) % 10}, eta=1.0),
        "ddim guided (scale 2)": dict(n=n, guidance=GuidanceConfig("label", 3, 2.0), steps=50),
        "classification read-out": dict(given={"image": x[:n]}),
    }
    failures = []
    for name, kw in runs.items():
        gen = torch.Generator().manual_seed(1)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out, seconds = _timed(lambda kw=kw, gen=gen: generate(model, generator=gen, progress=False, **kw))
        bad = [k for k, v in out.samples.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        for k, v in out.samples.items():
            try:
                model.taskset[k].validate(v)
            except Exception as e:  # noqa: BLE001 - report every problem, then fail
                bad.append(f"{k}: {e}")
        print(f"sample: {name:32s} {seconds:6.2f}s  {'ok' if not bad else f'FAILED {bad}'}")
        if bad:
            failures.append(f"{name}: {bad}")
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    """Run the smoke test; returns the exit code."""
    args = _parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("cuda_smoke: no CUDA device available; nothing to test (exit 0)")
        return 0
    from mtd_core.backbones import count_parameters

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    torch.manual_seed(0)
    model = _model(args.size, device)
    print(f"cuda_smoke: {name}, torch {torch.__version__}, "
          f"{count_parameters(model) / 1e6:.2f}M parameters, images {args.size}x{args.size}")
    x, y = _digits(args.size, device)
    g = torch.Generator(device=device).manual_seed(0)
    _train(model, x, y, 3, args.batch, g)  # warm-up (kernels, allocator)
    losses, seconds = _timed(lambda: _train(model, x, y, args.steps, args.batch, g))
    print(f"train: {args.steps} steps x batch {args.batch} in {seconds:.2f}s "
          f"({args.steps * args.batch / seconds:.0f} examples/s); loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    failures = [] if all(torch.isfinite(torch.tensor(losses))) else ["a training loss was not finite"]
    failures += _sample_checks(model, x, args.samples)
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")
    if failures:
        print("cuda_smoke: FAILED\n  " + "\n  ".join(failures))
        return 1
    print("cuda_smoke: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
