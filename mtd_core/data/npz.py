"""A user's own data in a NumPy ``.npz`` file: one array per field, examples along the first axis.

Conventions (nothing else is converted, so a mistake is an error rather than a silent change):
    4-D arrays (N, C, H, W) and 3-D arrays (N, H, W) are images: float arrays must already lie in [-1, 1];
        uint8 arrays are scaled from [0, 255] to [-1, 1]. ``channels_last = true`` reads (N, H, W, C).
    1-D integer arrays are class labels (int64, >= 0).
    2-D float arrays (N, d) are vectors (e.g. precomputed representations), kept as float32.
    2-D integer arrays (N, L) are token ids, kept as int64.
    1-D string arrays are captions (a list of str).
Arrays are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from mtd_core.data.check import check_images, check_labels
from mtd_core.data.splits import ArrayDataset, DatasetSplits, Field, images_to_unit_range, split_indices
from mtd_core.errors import ModalityDataError


def _field(path: Path, name: str, a: np.ndarray, channels_last: bool) -> Field:
    """One npz array as a dataset field, following the conventions in the module docstring."""
    src = str(path)
    if a.dtype.kind in "US":
        if a.ndim != 1:
            raise ModalityDataError(f"{src}: string array {name!r} must be 1-D (one caption per example), got {a.shape}")
        return [str(s) for s in a.tolist()]
    if a.dtype.kind == "O":
        raise ModalityDataError(f"{src}: array {name!r} has dtype object, which mtd does not load (no pickle)")
    if a.ndim in (3, 4):
        x = torch.from_numpy(np.ascontiguousarray(a))
        if a.ndim == 3:
            x = x.unsqueeze(1)
        elif channels_last:
            x = x.permute(0, 3, 1, 2).contiguous()
        if a.dtype == np.uint8:
            x = images_to_unit_range(x, 255.0)
        elif a.dtype.kind == "f":
            x = x.to(torch.float32)
        else:
            raise ModalityDataError(f"{src}: image array {name!r} has dtype {a.dtype}; use float in [-1, 1] or uint8")
        check_images(x, src, name, lambda i: f"{src}, row {i}")
        return x
    if a.ndim == 1:
        if a.dtype.kind not in "iu":
            raise ModalityDataError(
                f"{src}: 1-D array {name!r} has dtype {a.dtype}; 1-D arrays are class labels and must be integers"
            )
        y = torch.from_numpy(a.astype(np.int64))
        check_labels(y, src, name, where=lambda i: f"{src}, row {i}")
        return y
    if a.ndim == 2:
        if a.dtype.kind == "f":
            x = torch.from_numpy(a.astype(np.float32))
            bad = ~torch.isfinite(x)
            if bad.any():
                raise ModalityDataError(f"{src}, row {int(torch.nonzero(bad.any(1))[0])}: field {name!r} contains NaN "
                                        "or infinity")
            return x
        if a.dtype.kind in "iu":
            return torch.from_numpy(a.astype(np.int64))
    raise ModalityDataError(f"{src}: array {name!r} of shape {a.shape} and dtype {a.dtype} matches no known field "
                            "kind (images, labels, vectors, token ids, captions)")


def read_npz(path: str | Path, channels_last: bool = False) -> ArrayDataset:
    """Every array of an .npz file as a field of an :class:`ArrayDataset`."""
    path = Path(path)
    if not path.is_file():
        raise ModalityDataError(f"{path}: file not found (dataset 'npz', option 'path')")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ModalityDataError(f"{path}: cannot read the .npz file: {e}") from None
    if not arrays:
        raise ModalityDataError(f"{path}: the .npz file holds no arrays")
    return ArrayDataset({k: _field(path, k, a, channels_last) for k, a in arrays.items()}, str(path))


def load_npz(path: str, test_path: str | None = None, test_fraction: float = 0.1, seed: int = 0,
             channels_last: bool = False, name: str = "npz") -> DatasetSplits:
    """A dataset from .npz files.

    Args:
        path: the .npz file with the training data (or all data when ``test_path`` is not given).
        test_path: an .npz file with the test split (the same array names); None: hold out ``test_fraction``.
        test_fraction: share of ``path`` held out as the test split when ``test_path`` is None.
        seed: seeds that split.
        channels_last: read 4-D image arrays as (N, H, W, C) instead of (N, C, H, W).
        name: the dataset's name in reports.
    """
    train = read_npz(path, channels_last)
    if test_path is not None:
        test = read_npz(test_path, channels_last)
        if sorted(test.fields) != sorted(train.fields):
            raise ModalityDataError(f"{test_path}: holds arrays {sorted(test.fields)}, but {path} holds "
                                    f"{sorted(train.fields)}; both files need the same arrays")
    else:
        tr, te = split_indices(len(train), test_fraction, seed, str(path))
        train, test = train.subset(tr), train.subset(te)
    info = {"name": name, "source": str(path), "fields": sorted(train.fields), "train_size": len(train),
            "test_size": len(test)}
    return DatasetSplits(train=train, test=test, info=info)
