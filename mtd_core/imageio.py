"""Reading one example from a file: an image (Pillow, guarded against decompression bombs) or a .npy array
(never unpickled). Used by the png_folder dataset and by the default :meth:`Modality.parse`."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mtd_core.errors import ModalityDataError


def read_image(path: Path, channels: int, where: str = "") -> np.ndarray:
    """A PNG (or any image Pillow reads) as uint8 (channels, H, W); a missing, unreadable or oversized file
    (a decompression bomb: more than Pillow's MAX_IMAGE_PIXELS) is a ModalityDataError naming it and ``where``
    (e.g. the CSV line that lists it)."""
    at = f" ({where})" if where else ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                rgb = im.convert("L" if channels == 1 else "RGB")
    except FileNotFoundError:
        raise ModalityDataError(f"{path}{at}: file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ModalityDataError(f"{path}{at}: refused: the image is too large to decode safely ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ModalityDataError(f"{path}{at}: cannot read the image: {e}") from None
    a = np.asarray(rgb, dtype=np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def read_npy(path: str | Path, where: str = "") -> torch.Tensor:
    """A .npy file as a tensor (``allow_pickle=False``); a missing or unreadable file is a ModalityDataError naming
    it and ``where``."""
    at = f" ({where})" if where else ""
    try:
        return torch.from_numpy(np.load(path, allow_pickle=False))
    except FileNotFoundError:
        raise ModalityDataError(f"{path}{at}: file not found") from None
    except (OSError, ValueError) as e:
        raise ModalityDataError(f"{path}{at}: cannot read the .npy file: {e}") from None
