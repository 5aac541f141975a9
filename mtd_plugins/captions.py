"""Captions synthesised for the digits (and any labelled image set): "a [bright|faint] [thick|thin] <class noun>",
from a label and the image's ink statistics. The text modality uses them when a batch holds no captions."""

from __future__ import annotations

from collections.abc import Sequence

import torch

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Caption adjectives from image statistics; thresholds are the medians over scikit-learn's digits in [-1, 1].
BRIGHT_INK = 0.68  # mean value of the ink pixels (> 0) above this: "bright", else "faint"
THICK_INK = 0.30  # fraction of ink pixels above this: "thick", else "thin"


def _article(word: str) -> str:
    """The indefinite article before ``word`` ("an eight", "a one")."""
    w = word.lower()
    return "an" if w[:1] in "aeiou" and not w.startswith(("one", "uni", "use", "eu")) else "a"


def _caption(noun: str, brightness: str | None, thickness: str | None) -> str:
    words = [w for w in (brightness, thickness, noun) if w]
    return f"{_article(words[0])} {' '.join(words)}"


def caption_grid(nouns: Sequence[str]) -> list[str]:
    """Every caption :func:`synthesise` can produce with ``nouns``."""
    out = []
    for noun in [*nouns, "shape"]:
        out.append(_caption(noun, None, None))
        out += [_caption(noun, b, t) for b in ("bright", "faint") for t in ("thick", "thin")]
    return out


def synthesise(nouns: Sequence[str], labels: torch.Tensor | None, images: torch.Tensor | None) -> list[str]:
    """Captions from labels (B,) and/or images (B, C, H, W) in [-1, 1] (at least one): the class noun of the label
    ("shape" without labels), "bright"/"faint" by the mean of the ink pixels (> 0) and "thick"/"thin" by their
    share. A label without a noun is a ValueError."""
    n = len(labels) if labels is not None else len(images) if images is not None else 0
    words = ["shape"] * n
    if labels is not None:
        values = torch.as_tensor(labels).reshape(-1).tolist()
        bad = [v for v in values if not (isinstance(v, int) and 0 <= v < len(nouns))]
        if bad:
            raise ValueError(f"label {bad[0]!r} has no class name; the names cover 0..{len(nouns) - 1} "
                             f"({nouns[0]!r}..{nouns[-1]!r})")
        words = [nouns[v] for v in values]
    bright: list[str | None] = [None] * n
    thick: list[str | None] = [None] * n
    if images is not None:
        x = images.detach().float().flatten(1)
        ink = x > 0
        frac = ink.float().mean(1)
        level = (x * ink).sum(1) / ink.sum(1).clamp_min(1)
        bright = ["bright" if v > BRIGHT_INK else "faint" for v in level.tolist()]
        thick = ["thick" if v > THICK_INK else "thin" for v in frac.tolist()]
    return [_caption(words[i], bright[i], thick[i]) for i in range(n)]
