"""The IDX file format (MNIST, Fashion-MNIST) and the Fashion-MNIST dataset read from local files.

IDX: two zero bytes, a type code (0x08 = unsigned byte, ...), the number of dimensions n, n big-endian uint32
sizes, then the data in row-major order. Files may be gzip-compressed (``.gz``).
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import torch

from mtd_core.data.splits import ArrayDataset, DatasetSplits, images_to_unit_range
from mtd_core.errors import ConfigError, ModalityDataError

# IDX type code -> big-endian numpy dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEFAULT_FOLDERS = ("/usr/share/datasets/fashion-mnist", "/usr/share/dataset-fashion-mnist")


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (gzip or raw), in native byte order; errors name the file and the problem."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except IsADirectoryError:
        raise ModalityDataError(f"{path}: is a folder, expected an IDX file") from None
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ModalityDataError(f"{path}: cannot read the IDX file: {type(e).__name__}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ModalityDataError(f"{path}: not an IDX file (it must start with two zero bytes, a type code and a rank)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_TYPES:
        raise ModalityDataError(f"{path}: unknown IDX type code 0x{code:02x}; expected one of "
                                f"{[hex(c) for c in _IDX_TYPES]}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ModalityDataError(f"{path}: truncated IDX header ({len(raw)} bytes, the header needs {header})")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[code])
    expected = math.prod(shape) * dtype.itemsize  # Python integers: no overflow for absurd sizes
    if len(raw) - header != expected:
        raise ModalityDataError(
            f"{path}: IDX header says shape {shape} ({expected} data bytes), but the file holds {len(raw) - header} "
            "data bytes (truncated or corrupt download?)"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip-compressed when the name ends in .gz); for tests and small exports."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}
    dt = np.dtype(array.dtype).newbyteorder("=")
    if dt not in codes:
        raise ModalityDataError(f"{path}: IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, codes[dt], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    body = header + np.ascontiguousarray(array, dt.newbyteorder(">")).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(body)


def _dpkg_folder() -> Path | None:
    """The folder where the Debian package put the files, if it is installed."""
    if not shutil.which("dpkg"):
        return None
    try:
        out = subprocess.run(["dpkg", "-L", DEBIAN_PACKAGE], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        if line.endswith(FASHION_MNIST_FILES["train_images"] + ".gz") or line.endswith(FASHION_MNIST_FILES["train_images"]):
            return Path(line).parent
    return None


def find_fashion_mnist(folder: str | Path | None = None) -> Path:
    """The folder holding the four Fashion-MNIST IDX files: ``folder``, $MTD_FASHION_MNIST, the Debian package's
    folder or a usual system path. Raises with install instructions when none has them."""
    candidates: list[Path] = []
    if folder is not None:
        candidates.append(Path(folder))
    else:
        if os.environ.get("MTD_FASHION_MNIST"):
            candidates.append(Path(os.environ["MTD_FASHION_MNIST"]))
        dpkg = _dpkg_folder()
        if dpkg is not None:
            candidates.append(dpkg)
        candidates.extend(Path(p) for p in DEFAULT_FOLDERS)
    for c in candidates:
        if all(_idx_file(c, stem) is not None for stem in FASHION_MNIST_FILES.values()):
            return c
    looked = "\n".join(f"  {c}" for c in candidates)
    raise ModalityDataError(
        "fashion_mnist: the Fashion-MNIST IDX files "
        f"({', '.join(v + '[.gz]' for v in FASHION_MNIST_FILES.values())}) were not found. Looked in:\n{looked}\n"
        f"Install them with `apt-get install -y {DEBIAN_PACKAGE}` (Debian/Ubuntu; files go to "
        f"{DEFAULT_FOLDERS[0]}), or put the four files in a folder and pass it: `folder = \"/path/to/folder\"` in the "
        "[dataset] table, `--set dataset.folder=/path/to/folder`, or the environment variable MTD_FASHION_MNIST. "
        "mtd never downloads data."
    )


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashion_mnist(folder: str | None = None, limit_train: int | None = None,
                       limit_test: int | None = None) -> DatasetSplits:
    """Fashion-MNIST (28x28 grey garments, 10 classes) from local IDX files; the standard 60k/10k split.

    Args:
        folder: the folder with the four IDX files (gzip or raw); default: found by :func:`find_fashion_mnist`.
        limit_train: use only the first ``limit_train`` training examples (quick experiments); None: all 60000.
        limit_test: use only the first ``limit_test`` test examples; None: all 10000.
    """
    for key, limit in (("limit_train", limit_train), ("limit_test", limit_test)):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"fashion_mnist: {key} must be a positive integer or none, got {limit!r}")
    root = find_fashion_mnist(folder)

    def split(which: str, limit: int | None) -> ArrayDataset:
        img_path = _idx_file(root, FASHION_MNIST_FILES[f"{which}_images"])
        lab_path = _idx_file(root, FASHION_MNIST_FILES[f"{which}_labels"])
        assert img_path is not None and lab_path is not None
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise ModalityDataError(f"{img_path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} "
                                    f"{images.shape}")
        if labels.dtype.kind not in "iu":
            raise ModalityDataError(f"{lab_path}: expected integer labels (IDX type 0x08), got dtype {labels.dtype}")
        if labels.shape != (images.shape[0],):
            raise ModalityDataError(f"{lab_path}: expected {images.shape[0]} labels (one per image in {img_path.name}),"
                                    f" got shape {labels.shape}")
        bad = (labels < 0) | (labels > 9)
        if bad.any():
            i = int(np.argmax(bad))
            raise ModalityDataError(f"{lab_path}: example {i} has label {int(labels[i])}; Fashion-MNIST labels are 0..9")
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        x = images_to_unit_range(torch.from_numpy(images.copy()), 255.0).unsqueeze(1)
        return ArrayDataset({"image": x, "label": torch.from_numpy(labels.astype(np.int64))}, str(img_path))

    train, test = split("train", limit_train), split("test", limit_test)
    info = {"name": "fashion_mnist", "source": str(root), "num_classes": 10, "class_names": FASHION_MNIST_CLASSES,
            "image_shape": [1, 28, 28], "train_size": len(train), "test_size": len(test)}
    return DatasetSplits(train=train, test=test, info=info)
