"""The restoration benchmark shared by the single-task (SDEdit) and masked-image experiments and the sampler study:
the same masked inputs of the evaluation split for every experiment and seed, scored alike."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from experiments.evaluation import Evaluator
from experiments.measures import paired_metrics
from experiments.presets import Preset
from experiments.results import save_rows


def ratio_tag(ratio: float) -> str:
    """A metric-name suffix for a mask ratio: 0.25 -> "r25"."""
    return f"r{round(ratio * 100):02d}"


def restoration_set(ev: Evaluator, preset: Preset, ratio: float, n: int | None = None, *,
                    images: torch.Tensor | None = None, seed_offset: int | None = None) -> dict[str, torch.Tensor]:
    """The restoration benchmark at one mask ratio: the first ``n`` (default ``n_paired``) images of the evaluation
    split, or of ``images``, patch masks seeded by the ratio alone (plus ``seed_offset``, by default the split's
    ``ev.seed_offset``; so every experiment and seed restores exactly the same inputs), and the masked images."""
    from mtd_plugins.masked_image import apply_mask, make_mask

    n = preset.n_paired if n is None else n
    x = ev.take(n, "the restoration inputs (n_paired)")["image"] if images is None else images[:n]
    offset = ev.seed_offset if seed_offset is None else seed_offset
    g = torch.Generator().manual_seed(round(ratio * 1000) + offset)
    mask = make_mask(x.shape, ratio, g, kind="patch", patch=preset.patch)
    return {"image": x, "mask": mask, "masked": apply_mask(x, mask, fill=0.0)}


def restoration_scores(restored: torch.Tensor, rs: Mapping[str, torch.Tensor], name: str = "restored", suffix: str = ""
                       ) -> dict[str, float]:
    """PSNR (pooled, RESTORATION_PROTOCOL) and SSIM against the true images of ``rs`` (a :func:`restoration_set`):
    the masked input's (``masked_input_*``), the restoration's as generated (``{name}_*``) and with the observed pixels
    pasted back (``{name}_kept_*``)."""
    from mtd_plugins.masked_image import keep_observed

    kept = keep_observed(restored, rs["masked"], rs["mask"])
    metrics: dict[str, float] = {}
    for images, key in ((rs["masked"], "masked_input"), (restored, name), (kept, f"{name}_kept")):
        metrics.update(paired_metrics(images, rs["image"], key, suffix, pooled=True))
    return metrics


RESTORATION_PROTOCOL = {
    "restoration_psnr": "pooled over the image pairs: 10 log10(L^2 / MSE over every pixel of every pair), L = 2; "
                        "with the observed pixels kept, a mask that hides only background can be restored exactly, "
                        "and a mean of per-image PSNR would be infinite",
    "restoration_ssim": "mean over the image pairs",
    "restoration_scores": "<name>_*: as generated; <name>_kept_*: with the observed pixels pasted back "
                          "(mtd_plugins.masked_image.keep_observed)"}
"""How :func:`restoration` scores (stored in the protocol of every result that reports restoration)."""

RestoreFn = Callable[[torch.Tensor], torch.Tensor]
"""A restoration method: masked images in [-1, 1] -> restored images."""


def restoration(restore: RestoreFn, name: str, ev: Evaluator, preset: Preset, out_dir: Path, seed: int
                ) -> tuple[dict[str, float], list[str]]:
    """PSNR (pooled over the pairs, RESTORATION_PROTOCOL) and SSIM of ``restore`` at every mask ratio of the preset,
    against the true images of the evaluation split: as generated (``{name}_psnr_<ratio>``) and with the observed
    pixels pasted back (``{name}_kept_psnr_<ratio>``), with the masked input itself as the floor
    (``masked_input_psnr_<ratio>``). Grids of ratio 0.5 and the largest ratio are written to ``out_dir``; returns
    the metrics and the grid file names."""
    metrics: dict[str, float] = {}
    grids = []
    for r in preset.mask_ratios:
        tag = ratio_tag(r)
        rs = restoration_set(ev, preset, r)
        restored = restore(rs["masked"])
        metrics.update(restoration_scores(restored, rs, name, f"_{tag}"))
        print(f"  ratio {r:.2f}: {name} PSNR {metrics[f'{name}_psnr_{tag}']:.2f} dB (observed pixels kept "
              f"{metrics[f'{name}_kept_psnr_{tag}']:.2f}); masked input {metrics[f'masked_input_psnr_{tag}']:.2f} dB "
              f"(n={len(restored)})")
        if r == 0.5 or r == preset.mask_ratios[-1]:
            grids.append(save_rows(out_dir / f"seed{seed}_{name}_{tag}.png",
                                   [rs["masked"][:16], restored[:16], rs["image"][:16]], [],
                                   f"{name} at ratio {r}: masked | generated | true"))
    return metrics, grids


def restoration_keys(preset: Preset, name: str) -> list[str]:
    """The metric names :func:`restoration` reports."""
    return [f"{n}_{m}_{ratio_tag(r)}" for r in preset.mask_ratios for n in ("masked_input", name, f"{name}_kept")
            for m in ("psnr", "ssim")]

