"""Sample grids as PNG (Pillow only, no torchvision): each cell shows a sample's images side by side with its
generated label or caption written beneath, so the agreement between modalities can be judged at a glance."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from mtd_core.modality import Modality
from mtd_core.training.checkpoint import write_atomic
from mtd_core.types import BatchValue

if TYPE_CHECKING:
    from mtd_core.taskset import TaskSet

BACKGROUND = (255, 255, 255)
MAX_CAPTION_WIDTH = 150  # pixels
INK = (20, 20, 20)


@attrs.frozen
class GridCell:
    """One sample of a grid.

    Args:
        images: image tensors (C, H, W) in [-1, 1] with C = 1 or 3, drawn left to right.
        caption: text drawn beneath the images ("" for none).
    """

    images: list[torch.Tensor]
    caption: str = ""


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _to_pil(x: torch.Tensor, scale: int) -> Image.Image:
    """A (C, H, W) image in [-1, 1] as an upscaled (nearest) grey or RGB Pillow image."""
    a = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    if a.shape[0] == 1:
        img = Image.fromarray(np.ascontiguousarray(a[0])).convert("RGB")
    else:
        img = Image.fromarray(np.ascontiguousarray(a[:3].transpose(1, 2, 0)))
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)


def _wrap(text: str, width: int, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont | ImageFont.FreeTypeFont
          ) -> list[str]:
    """Split ``text`` into lines no wider than ``width`` pixels (a word longer than that gets its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def render_grid(cells: Sequence[GridCell], ncols: int, scale: int = 4, font_size: int = 11,
                row_labels: Sequence[str] | None = None, title: str = "") -> Image.Image:
    """Draw ``cells`` row by row, ``ncols`` per row.

    Args:
        cells: the samples.
        ncols: cells per row.
        scale: integer upscaling of every image (nearest neighbour, so pixels stay sharp).
        font_size: caption size in pixels.
        row_labels: optional text at the left of each row (e.g. the requested class of that row).
        title: optional line of text above the grid.
    """
    if not cells:
        raise ValueError("render_grid: no cells to draw")
    font = _font(font_size)
    pad, gap = 4, 2
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    tiles = [[_to_pil(x, scale) for x in c.images] for c in cells]
    img_w = max(sum(t.width for t in ts) + gap * (len(ts) - 1) for ts in tiles)
    img_h = max(max((t.height for t in ts), default=0) for ts in tiles)
    # captions may widen a cell up to MAX_CAPTION_WIDTH pixels, then wrap (at most 3 lines)
    longest = max((int(probe.textlength(c.caption, font=font)) for c in cells), default=0)
    text_w = max(img_w, min(longest, MAX_CAPTION_WIDTH))
    wrapped = ["\n".join(_wrap(c.caption, text_w, probe, font)[:3]) for c in cells]
    lines = max((w.count("\n") + 1 if w else 0) for w in wrapped)
    cap_h = lines * (font_size + 2)
    cell_w, cell_h = text_w + 2 * pad, img_h + cap_h + 2 * pad
    rows = (len(cells) + ncols - 1) // ncols
    left = 0
    if row_labels:
        left = max(int(probe.textlength(s, font=font)) for s in row_labels) + 2 * pad
    top = font_size + 2 * pad if title else 0
    canvas = Image.new("RGB", (left + ncols * cell_w, top + rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, fill=INK, font=font)
    for i, (ts, text) in enumerate(zip(tiles, wrapped)):
        r, c = divmod(i, ncols)
        x0, y0 = left + c * cell_w + pad, top + r * cell_h + pad
        x = x0
        for t in ts:
            canvas.paste(t, (x, y0))
            x += t.width + gap
        if text:
            draw.multiline_text((x0, y0 + img_h + 2), text, fill=INK, font=font, spacing=2)
    for r, label in enumerate(row_labels or []):
        draw.text((pad, top + r * cell_h + pad + img_h // 2 - font_size // 2), label, fill=INK, font=font)
    return canvas


def save_png(path: str | Path, image: Image.Image) -> Path:
    """Write a PNG atomically (a partly written grid never replaces a good one)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    write_atomic(path, buf.getvalue())
    return Path(path)


def class_names_for(modality: Modality, dataset_names: Sequence[str] | None = None) -> list[str] | None:
    """Display names of a modality's classes: its own ``class_names()``, else the dataset's when their number
    matches the modality's range of class indices, else None."""
    own = modality.class_names()
    if own:
        return own
    spec = modality.data_spec()
    k = int(spec.high) + 1 if spec.high is not None and spec.shape == () else None
    if dataset_names and (k is None or len(dataset_names) == k):
        return list(dataset_names)
    return None


def sample_cells(taskset: TaskSet, samples: Mapping[str, BatchValue], class_names: Sequence[str] | None = None,
                 prefix: Mapping[str, str] | None = None) -> list[GridCell]:
    """Grid cells for generated (or real) samples of a task set: image-like modalities (float (B, C, H, W) with
    C in {1, 3}) drawn side by side, base first; labels and captions as text (``prefix``: e.g. {"label": "y="})."""
    names = list(taskset.modalities)
    base = taskset.base.name if taskset.base is not None else None
    if base in names:
        names.remove(base)
        names.insert(0, base)
    images = [n for n in names if isinstance(samples.get(n), torch.Tensor) and samples[n].ndim == 4
              and samples[n].is_floating_point() and samples[n].shape[1] in (1, 3)]
    texts = [n for n in names if n not in images and n in samples]
    count = len(next(iter(samples.values())))
    cells = []
    for i in range(count):
        parts = []
        for n in texts:
            m = taskset.modalities[n]
            v = samples[n]
            text: str | None
            if isinstance(v, list):
                text = str(v[i])
            elif isinstance(v, torch.Tensor):
                text = m.describe(v[i], class_names_for(m, class_names))
            else:
                text = None
            if text is not None:
                parts.append(f"{(prefix or {}).get(n, '')}{text}")
        cells.append(GridCell(images=[samples[n][i] for n in images], caption=" | ".join(parts)))
    return cells
