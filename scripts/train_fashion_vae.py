"""Train a small diffusers AutoencoderKL on Fashion-MNIST on the CPU, for the ``latent_image`` modality.

    python scripts/train_fashion_vae.py --out runs/fashion_vae            # 3000 steps; minutes on a CPU
    mtd train examples/configs/latent_image_label.toml --out runs/latent_image_label

Design: 28x28 grey images, two encoder blocks, so a factor-2 latent of 4 x 14 x 14. No padding is needed, and the
latent has exactly as many numbers as the image (784): the training loss divides the eps error by the base's data
size, so the eps term and the label's loss weight keep the balance measured in pixel space; a factor-4 latent (4 x
7 x 7) reconstructs garments' edges and prints visibly worse at this training budget. The loss is the pixel MSE plus
``--kl-weight`` times the mean KL of the latent distribution to N(0, I) (a small weight: a nearly deterministic
code that stays near the origin). After training, ``shift_factor`` and ``scaling_factor`` are set from the training
latents (their mean, and 1 / their std after the shift), so z_0 has zero mean and unit variance as the diffusion
assumes; both are saved in config.json with ``save_pretrained``.

Data: the training split with the last ``--holdout`` examples held out (the dataset's ``holdout``, 5000 as in the
evaluation protocol); the reconstruction MSE is printed on that validation split, and the test split is not read.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mtd_core.data import DatasetConfig, load_dataset
from mtd_core.data.build import fetch
from mtd_core.errors import MTDError
from mtd_core.plugins.registry import get_registry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the folder to save the AutoencoderKL to (save_pretrained)")
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps (default 3000: minutes on a CPU)")
    p.add_argument("--batch-size", type=int, default=64, help="examples a step (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, cosine to a tenth (default 1e-3)")
    p.add_argument("--kl-weight", type=float, default=1e-4,
                   help="weight of the mean KL to N(0, I) next to the pixel MSE (default 1e-4)")
    p.add_argument("--channels", default="16,32",
                   help="block_out_channels; each block after the first halves the size (default 16,32: factor 2)")
    p.add_argument("--latent-channels", type=int, default=4, help="channels of the latent (default 4)")
    p.add_argument("--holdout", type=int, default=5000,
                   help="the last training examples kept out as the validation split (default 5000)")
    p.add_argument("--folder", default=None, help="the Fashion-MNIST IDX folder (default: found as mtd finds it)")
    p.add_argument("--seed", type=int, default=0, help="seeds the initialisation and the batches (default 0)")
    p.add_argument("--log-every", type=int, default=200, help="print the training loss every N steps")
    return p.parse_args(argv)


def build_vae(channels: tuple[int, ...], latent_channels: int) -> Any:
    """A small grey-scale AutoencoderKL: one ResNet layer a block, no attention in the middle block."""
    from diffusers import AutoencoderKL

    groups = math.gcd(*channels, 32)
    return AutoencoderKL(  # type: ignore[no-untyped-call]
        in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels), block_out_channels=channels, layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=groups, sample_size=28, mid_block_add_attention=False)


def step_loss(vae: Any, x: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss, the pixel MSE) of one batch: reconstruct from a draw of the latent distribution."""
    dist = vae.encode(x).latent_dist
    rec = vae.decode(dist.sample()).sample
    mse = (rec - x).pow(2).mean()
    kl = 0.5 * (dist.mean.pow(2) + dist.var - 1.0 - dist.logvar).mean()
    return mse + kl_weight * kl, mse


@torch.no_grad()
def latent_stats(vae: Any, images: torch.Tensor, n: int = 5000) -> tuple[float, float]:
    """The mean and std of the latent means over the first ``n`` training images."""
    z = torch.cat([vae.encode(images[i:i + 500]).latent_dist.mean for i in range(0, min(n, len(images)), 500)])
    return float(z.mean()), float(z.std())


@torch.no_grad()
def reconstruction_mse(vae: Any, images: torch.Tensor) -> float:
    """Mean squared error per pixel (images in [-1, 1]) of decode(mean of encode(x)), clamped as sampling clamps."""
    total = 0.0
    for i in range(0, len(images), 500):
        x = images[i:i + 500]
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        total += float((rec - x).pow(2).sum())
    return total / images.numel()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    channels = tuple(int(c) for c in args.channels.split(","))
    options = {"folder": args.folder} if args.folder else {}
    try:
        data = load_dataset(DatasetConfig(name="fashion_mnist", holdout=args.holdout, options=options),
                            get_registry())
    except MTDError as e:
        print(f"train_fashion_vae: {e}", file=sys.stderr)
        return 1
    splits = data.splits
    if splits.val is None:
        print("train_fashion_vae: --holdout must be > 0 (the validation split the MSE is reported on)", file=sys.stderr)
        return 1
    train = fetch(splits.train, torch.arange(len(splits.train)))["image"]
    val = fetch(splits.val, torch.arange(len(splits.val)))["image"]
    assert isinstance(train, torch.Tensor) and isinstance(val, torch.Tensor)
    torch.manual_seed(args.seed)
    vae = build_vae(channels, args.latent_channels)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / max(1, args.steps))))
    gen = torch.Generator().manual_seed(args.seed)
    print(f"train_fashion_vae: {len(train)} training images, {len(val)} validation, "
          f"{sum(p.numel() for p in vae.parameters())} parameters, blocks {channels}", flush=True)
    start = time.time()
    vae.train()
    for step in range(1, args.steps + 1):
        x = train[torch.randint(len(train), (args.batch_size,), generator=gen)]
        loss, mse = step_loss(vae, x, args.kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % args.log_every == 0 or step == args.steps:
            print(f"step {step}: loss {float(loss.detach()):.5f}, mse {float(mse.detach()):.5f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    vae.eval()
    shift, std = latent_stats(vae, train)
    vae.register_to_config(shift_factor=shift, scaling_factor=1.0 / std)
    out = Path(args.out)
    vae.save_pretrained(str(out))
    val_mse = reconstruction_mse(vae, val)
    print(f"saved {out}: latent {args.latent_channels} x {28 // 2 ** (len(channels) - 1)} x "
          f"{28 // 2 ** (len(channels) - 1)}, shift_factor {shift:.4f}, scaling_factor {1.0 / std:.4f}")
    print(f"validation reconstruction MSE (images in [-1, 1], {len(val)} examples): {val_mse:.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
