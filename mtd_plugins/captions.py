"""Captions synthesised for the digits (and any labelled image set): "a [bright|faint] [thick|thin] <class noun>",
from a label and the image's ink statistics, written into a batch by the ``captions`` dataset transform:

    [dataset]
    transforms = [{ kind = "captions", into = "text" }]   # label + image -> a caption for the text modality

The transform is registered by mtd_plugins/schedules.py like the other built-in transforms. The text modality only
tokenises captions; :func:`caption_grid` also gives it a fallback caption set to fit a tokenizer on without data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import attrs
import torch

from mtd_core.errors import ConfigError, ModalityDataError

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


def _nouns(value: object) -> object:
    """A list of nouns as a tuple (so the frozen transform stays hashable); anything else as given, for the check."""
    return tuple(value) if isinstance(value, list) and value else value


@attrs.frozen
class CaptionsTransform:
    """Writes a caption per example, "a [bright|faint] [thick|thin] <class noun>" (see :func:`synthesise`), from a
    label field and an image field, as a list of str (what the text modality tokenises).

    Args:
        label: the field of integer class indices (B,); "" to caption without a class noun ("a bright thick shape").
        image: the field of float images (B, C, H, W) in [-1, 1] whose ink gives bright/faint and thick/thin; ""
            to caption by the class noun alone ("a seven").
        into: the field to write (the name of the text modality, e.g. "text").
        nouns: the noun of each class (label k -> nouns[k]); by default the dataset's class names (its info's
            ``class_names``, given by :meth:`with_info` when the dataset is loaded), which a dataset without them
            makes a required option.
    """

    kind: ClassVar[str] = "captions"
    label: str = "label"
    image: str = "image"
    into: str = "caption"
    nouns: tuple[str, ...] | None = attrs.field(default=None, converter=_nouns)

    def __attrs_post_init__(self) -> None:
        for option in ("label", "image", "into"):
            value = getattr(self, option)
            if not isinstance(value, str) or (option == "into" and not value):
                what = "a field name" if option == "into" else 'a field name, or "" to read none'
                raise ConfigError(f"transform 'captions': {option} must be {what}, got {value!r}")
        if not self.label and not self.image:
            raise ConfigError("transform 'captions': label and image are both \"\"; a caption needs at least one of "
                              "them to read")
        if self.nouns is not None and not (isinstance(self.nouns, tuple) and self.nouns
                                           and all(isinstance(n, str) and n.strip() for n in self.nouns)):
            raise ConfigError(f"transform 'captions': nouns must be a non-empty list of non-empty strings (the noun "
                              f"of each class, label k -> nouns[k]), got {self.nouns!r}")

    def with_info(self, info: Mapping[str, object]) -> CaptionsTransform:
        """This transform with the dataset's class names as its nouns when it has none of its own (called by
        ``load_dataset`` with the dataset's info)."""
        names = info.get("class_names")
        if self.nouns is None and isinstance(names, (list, tuple)) and names and all(
                isinstance(n, str) and n.strip() for n in names):
            return attrs.evolve(self, nouns=tuple(names))
        return self

    def _field(self, batch: Mapping[str, object], option: str) -> torch.Tensor | None:
        name = getattr(self, option)
        if not name:
            return None
        if name not in batch:
            raise ModalityDataError(f"transform 'captions': the batch has no field {name!r} (fields: {sorted(batch)}); "
                                    f"set the transform's {option!r} (\"\" to caption without the {option})")
        x = batch[name]
        if option == "label":
            if not isinstance(x, torch.Tensor) or x.ndim != 1 or x.is_floating_point() or x.dtype == torch.bool:
                raise ModalityDataError(f"transform 'captions': field {name!r} must be integer class indices (B,), "
                                        f"got {getattr(x, 'dtype', type(x).__name__)} of shape "
                                        f"{tuple(getattr(x, 'shape', ()))}")
        elif not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
            raise ModalityDataError(f"transform 'captions': field {name!r} must be float images (B, C, H, W), "
                                    f"got {getattr(x, 'shape', type(x).__name__)}")
        return x

    def __call__(self, batch: Mapping[str, object]) -> dict[str, object]:
        labels, images = self._field(batch, "label"), self._field(batch, "image")
        if labels is not None and images is not None and len(labels) != len(images):
            raise ModalityDataError(f"transform 'captions': fields {self.label!r} and {self.image!r} hold "
                                    f"{len(labels)} and {len(images)} examples")
        if labels is not None and self.nouns is None:
            raise ConfigError(f"transform 'captions': field {self.label!r} needs a noun per class, and there are "
                              "none (no 'nouns' option, and the dataset's info has no class_names); set the "
                              "transform's 'nouns' (e.g. nouns = [\"zero\", \"one\", ...])")
        try:
            captions = synthesise(self.nouns or (), labels, images)
        except ValueError as e:
            raise ModalityDataError(f"transform 'captions': field {self.label!r}: {e}; set the transform's "
                                    "'nouns' (one per class)") from None
        return {**batch, self.into: captions}

    def to_config(self) -> dict[str, object]:
        """A plain dict with ``kind`` (``nouns`` only when set); :func:`build_transform` rebuilds an equal transform."""
        out: dict[str, object] = {"kind": self.kind, "label": self.label, "image": self.image, "into": self.into}
        if self.nouns is not None:
            out["nouns"] = list(self.nouns)
        return out
