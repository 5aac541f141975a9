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
import zlib
from pathlib import Path

import numpy as np
import torch

from mtd_core.data.check import check_images, check_labels
from mtd_core.data.splits import ArrayDataset, DatasetSplits, Field, images_to_unit_range, split_indices
from mtd_core.errors import ModalityDataError, MTDError


INT64_MAX = int(np.iinfo(np.int64).max)


def _captions(src: str, name: str, a: np.ndarray) -> list[str]:
    """A 1-D string array as a list of str (byte strings must be UTF-8)."""
    if a.ndim != 1:
        raise ModalityDataError(f"{src}: string array {name!r} must be 1-D (one caption per example), got {a.shape}")
    if a.dtype.kind == "U":
        return [str(v) for v in a.tolist()]
    out = []
    for i, v in enumerate(a.tolist()):
        try:
            out.append(v.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ModalityDataError(f"{src}, row {i}: field {name!r} (dtype {a.dtype.str}) is not UTF-8 text "
                                    f"(byte {e.start}: {e.reason})") from None
    return out


def _integers(src: str, name: str, a: np.ndarray) -> torch.Tensor:
    """An integer array as int64, refusing values int64 cannot hold (a uint64 above 2**63 - 1) by their true value."""
    if a.dtype.kind == "u" and a.size and int(a.max()) > INT64_MAX:
        i = int(np.argmax((a > INT64_MAX).reshape(len(a), -1).any(1)))
        value = int(a[i].max())
        raise ModalityDataError(f"{src}, row {i}: field {name!r} (dtype {a.dtype}) has value {value}, too large for "
                                f"int64 (expected 0..{INT64_MAX})")
    return torch.from_numpy(a.astype(np.int64))


def _images(src: str, name: str, a: np.ndarray, channels_last: bool) -> torch.Tensor:
    """A 3-D (N, H, W) or 4-D (N, C, H, W) uint8 or float array as float32 images in [-1, 1]."""
    if a.dtype != np.uint8 and a.dtype.kind != "f":
        raise ModalityDataError(f"{src}: image array {name!r} of shape {a.shape} has dtype {a.dtype}; use float in "
                                "[-1, 1] or uint8")
    x = torch.from_numpy(np.ascontiguousarray(a))
    x = x.unsqueeze(1) if a.ndim == 3 else x.permute(0, 3, 1, 2).contiguous() if channels_last else x
    x = images_to_unit_range(x, 255.0) if a.dtype == np.uint8 else x.to(torch.float32)
    check_images(x, src, name, lambda i: f"{src}, row {i}")
    return x


def _vectors(src: str, name: str, a: np.ndarray) -> torch.Tensor:
    """A 2-D float array as float32 vectors (finite, within float32's range)."""
    bad = ~np.isfinite(a) | (np.abs(a) > np.finfo(np.float32).max)
    if bad.any():
        i = int(np.argmax(bad.any(1)))
        raise ModalityDataError(f"{src}, row {i}: field {name!r} contains NaN, infinity or a value beyond float32's "
                                f"range ({float(a[i][bad[i]][0])})")
    return torch.from_numpy(a.astype(np.float32))


def _field(path: Path, name: str, a: np.ndarray, channels_last: bool) -> Field:
    """One npz array as a dataset field, following the conventions in the module docstring."""
    src = str(path)
    if a.dtype.kind in "US":
        return _captions(src, name, a)
    if a.dtype.kind not in "biuf":
        what = "Python objects (no pickle)" if a.dtype.kind == "O" else "no kind mtd reads"
        raise ModalityDataError(f"{src}: array {name!r} has dtype {a.dtype} ({what}); expected integers, floats "
                                "or strings")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))  # the same values in this machine's byte order
    if a.ndim in (3, 4):
        return _images(src, name, a, channels_last)
    if a.ndim == 1:
        if a.dtype.kind not in "iu":
            raise ModalityDataError(
                f"{src}: 1-D array {name!r} has dtype {a.dtype}; 1-D arrays are class labels and must be integers"
            )
        y = _integers(src, name, a)
        check_labels(y, src, name, where=lambda i: f"{src}, row {i}")
        return y
    if a.ndim == 2 and a.dtype.kind == "f":
        return _vectors(src, name, a)
    if a.ndim == 2 and a.dtype.kind in "iu":
        return _integers(src, name, a)
    raise ModalityDataError(f"{src}: array {name!r} of shape {a.shape} and dtype {a.dtype} matches no known field "
                            "kind (images, labels, vectors, token ids, captions)")


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip file's first bytes (a member, or an empty archive)
_NPY_MAGIC = b"\x93NUMPY"
# What reading a damaged archive may raise (zlib.error: a corrupt compressed member; RuntimeError: an encrypted one;
# NotImplementedError: an unsupported compression method).
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError,
                KeyError)


def _check_archive(path: Path) -> None:
    """Raise unless ``path`` is a file that starts like a zip archive (what np.savez writes)."""
    if not path.exists():
        raise ModalityDataError(f"{path}: file not found (dataset 'npz', option 'path')")
    if not path.is_file():
        raise ModalityDataError(f"{path}: is not a file (a folder?); expected an .npz archive (dataset 'npz')")
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as e:
        raise ModalityDataError(f"{path}: cannot read the file: {e}") from None
    if head.startswith(_NPY_MAGIC):
        raise ModalityDataError(f"{path}: is a single .npy array, not an npz archive; save the arrays with "
                                "numpy.savez(path, image=..., label=...) to name each field")
    if not head.startswith(_ZIP_MAGIC):
        what = "an empty file" if not head else f"a file starting with {head[:8]!r}"
        raise ModalityDataError(f"{path}: is {what}, not an npz archive (a zip file of .npy arrays, as numpy.savez "
                                "writes it)")


def _read_member(path: Path, data: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    """One array of an open archive; a member that is not a plain .npy array is an error naming it."""
    try:
        a = data[key]
    except ValueError as e:
        if "pickle" in str(e).lower():  # numpy's message for object arrays suggests allow_pickle: mtd never does
            raise ModalityDataError(f"{path}: array {key!r} holds Python objects (dtype object), which mtd does not "
                                    "load (nothing is unpickled); store numbers or strings") from None
        raise ModalityDataError(f"{path}: array {key!r} cannot be read: {e}") from None
    except MemoryError as e:  # a damaged or hostile header can declare an absurd shape
        raise ModalityDataError(f"{path}: array {key!r} is too large to load ({e})") from None
    except _READ_ERRORS as e:
        raise ModalityDataError(f"{path}: array {key!r} cannot be read (damaged archive?): {type(e).__name__}: "
                                f"{e}") from None
    if not isinstance(a, np.ndarray):
        raise ModalityDataError(f"{path}: member {key!r} of the archive is not a .npy array; an npz archive holds "
                                "only arrays (numpy.savez)")
    return a


def read_npz(path: str | Path, channels_last: bool = False) -> ArrayDataset:
    """Every array of an .npz file as a field of an :class:`ArrayDataset`."""
    path = Path(path)
    _check_archive(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ModalityDataError(f"{path}: is not an npz archive")
            arrays = {k: _read_member(path, data, k) for k in data.files}
    except MTDError:
        raise
    except _READ_ERRORS as e:
        raise ModalityDataError(f"{path}: cannot read the npz archive: {type(e).__name__}: {e}") from None
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
