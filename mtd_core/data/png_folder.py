"""A folder of PNG images with a CSV of labels (and optionally captions and a train/test column).

The CSV has a header row; ``filename`` (relative to the folder) and ``label`` (an integer class index) are
required; ``caption`` (free text) and ``split`` ("train" or "test") are optional. Images are read with Pillow,
converted to grey (channels = 1) or RGB (channels = 3) and scaled from [0, 255] to [-1, 1]; all must have the
same size.
"""

from __future__ import annotations

import csv
import re
import struct
import zlib
from pathlib import Path, PurePath

import attrs
import numpy as np
import torch
from PIL import Image

from mtd_core.data.splits import ArrayDataset, DatasetSplits, Field, images_to_unit_range, split_indices
from mtd_core.errors import ConfigError, ModalityDataError
from mtd_core.imageio import read_image

REQUIRED_COLUMNS = ("filename", "label")
LABEL_MAX = 2**63 - 1
"""The largest class index a label can hold (int64)."""
_INTEGER = re.compile(r"[+-]?[0-9]+")
# 8-bit modes only: Pillow's conversion of a 16- or 32-bit image ("I;16", "I", "F") to "L" or "RGB" clips every value
# above 255, which would change the data without a word.
_EIGHT_BIT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
# What Pillow's decoders may raise on a damaged file beyond the OSError and ValueError read_image turns into errors.
_DECODER_ERRORS = (SyntaxError, EOFError, struct.error, zlib.error, IndexError, KeyError, TypeError)


@attrs.frozen
class Row:
    """One data row of the labels CSV: its line in the file and its cells."""

    line: int
    cells: dict[str, str]


def _read_csv(csv_path: Path) -> tuple[list[Row], list[str]]:
    """The labels CSV's rows (with their line numbers; blank lines skipped) and columns, after checking its
    encoding, its header and that every row has one cell per column."""
    try:  # utf-8-sig: a byte-order mark, as spreadsheet programs write it, is not part of the first column's name
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            columns = next(reader, [])
            lines = [(reader.line_num, cells) for cells in reader if cells]
    except UnicodeDecodeError as e:
        raise ModalityDataError(f"{csv_path}: the labels CSV is not UTF-8 text (byte {e.start}: {e.reason}); save it "
                                "as UTF-8") from None
    except (OSError, csv.Error) as e:
        raise ModalityDataError(f"{csv_path}: cannot read the labels CSV: {e}") from None
    if not lines:
        raise ModalityDataError(f"{csv_path}: the labels CSV has no rows")
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise ModalityDataError(f"{csv_path}: the header names column(s) {twice} more than once")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ModalityDataError(f"{csv_path}: missing column(s) {missing}; the header must include "
                                f"{list(REQUIRED_COLUMNS)} (optional: caption, split), got {columns}")
    for line, cells in lines:
        if len(cells) != len(columns):
            raise ModalityDataError(f"{csv_path}, line {line}: {len(cells)} cell(s), but the header has "
                                    f"{len(columns)} columns {columns}")
    return [Row(line, dict(zip(columns, cells))) for line, cells in lines], columns


def _label(csv_path: Path, row: Row) -> int:
    """The row's class index: a decimal integer in 0..2**63-1 (spaces around it allowed)."""
    text = row.cells["label"].strip()
    if not _INTEGER.fullmatch(text):
        raise ModalityDataError(f"{csv_path}, line {row.line}: label {row.cells['label']!r} is not an integer")
    label = int(text)
    if label < 0:
        raise ModalityDataError(f"{csv_path}, line {row.line}: label {label} is negative")
    if label > LABEL_MAX:
        raise ModalityDataError(f"{csv_path}, line {row.line}: label {label} is too large (labels are class indices "
                                f"in 0..{LABEL_MAX})")
    return label


def _image_path(root: Path, csv_path: Path, row: Row) -> Path:
    """The row's image file: ``filename`` must name a file inside ``root`` (relative, no '..')."""
    name = row.cells["filename"]
    rel = PurePath(name)
    if not name.strip():
        raise ModalityDataError(f"{csv_path}, line {row.line}: the filename is empty")
    if rel.is_absolute() or rel.drive or ".." in rel.parts:
        raise ModalityDataError(f"{csv_path}, line {row.line}: filename {name!r} points outside the folder {root}; "
                                "filenames must be relative to the folder, without '..' or a leading '/'")
    return root / rel


def _read_png(path: Path, channels: int, where: str) -> np.ndarray:
    """An 8-bit image as uint8 (channels, H, W); any failure is a ModalityDataError naming the file and ``where``."""
    try:
        img = read_image(path, channels, where)
        with Image.open(path) as im:
            mode = im.mode
    except _DECODER_ERRORS as e:
        raise ModalityDataError(f"{path} ({where}): cannot read the image: {type(e).__name__}: {e}") from None
    except OSError as e:  # the file changed between the two reads
        raise ModalityDataError(f"{path} ({where}): cannot read the image: {e}") from None
    if mode not in _EIGHT_BIT_MODES:
        raise ModalityDataError(f"{path} ({where}): image mode {mode!r} has more than 8 bits per channel; "
                                "png_folder reads 8-bit images (grey or RGB), convert it to 8 bits first")
    return img


def _split(csv_path: Path, row: Row, columns: list[str]) -> str:
    split = (row.cells.get("split") or "").strip().lower()
    if "split" in columns and split not in ("train", "test"):
        raise ModalityDataError(f"{csv_path}, line {row.line}: split must be 'train' or 'test', got "
                                f"{row.cells['split']!r}")
    return split


def _train_test(csv_path: Path, splits: list[str], n: int, test_fraction: float, seed: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    if not any(splits):
        return split_indices(n, test_fraction, seed, str(csv_path))
    tr = torch.tensor([i for i, s in enumerate(splits) if s == "train"], dtype=torch.long)
    te = torch.tensor([i for i, s in enumerate(splits) if s == "test"], dtype=torch.long)
    if len(tr) == 0 or len(te) == 0:
        raise ModalityDataError(f"{csv_path}: the split column must mark at least one 'train' and one 'test' row")
    return tr, te


def load_png_folder(folder: str, labels: str = "labels.csv", channels: int = 1, test_fraction: float = 0.1,
                    seed: int = 0, class_names: list[str] | None = None) -> DatasetSplits:
    """Images and labels (and captions) from a folder of PNG files and a CSV.

    Args:
        folder: the folder holding the images; every ``filename`` of the CSV must lie inside it.
        labels: the CSV file, relative to ``folder`` or absolute.
        channels: 1 (grey) or 3 (RGB): the images are converted to this.
        test_fraction: share held out as the test split when the CSV has no ``split`` column.
        seed: seeds that split.
        class_names: display names of the classes (index -> name), for captions and grids.
    """
    root = Path(folder)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "folder not found"
        raise ModalityDataError(f"{root}: {what} (dataset 'png_folder', option 'folder')")
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ConfigError(f"png_folder {root}: channels must be 1 or 3, got {channels!r}")
    csv_path = Path(labels) if Path(labels).is_absolute() else root / labels
    rows, columns = _read_csv(csv_path)
    label_list = [_label(csv_path, row) for row in rows]
    splits = [_split(csv_path, row, columns) for row in rows]
    paths = [_image_path(root, csv_path, row) for row in rows]
    images: list[np.ndarray] = []
    for row, path in zip(rows, paths):
        img = _read_png(path, channels, f"{csv_path}, line {row.line}")
        if images and img.shape != images[0].shape:
            raise ModalityDataError(f"{path} ({csv_path}, line {row.line}): image has shape {img.shape[1:]} (H, W), "
                                    f"but {paths[0]} has {images[0].shape[1:]}; all images must have the same size")
        images.append(img)
    fields: dict[str, Field] = {"image": images_to_unit_range(torch.from_numpy(np.stack(images)), 255.0),
                                "label": torch.tensor(label_list, dtype=torch.long)}
    if "caption" in columns:
        fields["caption"] = [row.cells.get("caption") or "" for row in rows]
    data = ArrayDataset(fields, str(csv_path), [f"line {row.line} ({row.cells['filename']})" for row in rows])
    tr, te = _train_test(csv_path, splits, len(data), test_fraction, seed)
    info = {"name": "png_folder", "source": str(root), "image_shape": list(images[0].shape),
            "num_classes": max(label_list) + 1, "train_size": len(tr), "test_size": len(te)}
    if class_names:
        if max(label_list) >= len(class_names):
            row = rows[label_list.index(max(label_list))]
            raise ConfigError(f"{csv_path}, line {row.line}: label {max(label_list)} has no name: class_names "
                              f"(dataset option) names {len(class_names)} classes, 0..{len(class_names) - 1}")
        info["class_names"] = list(class_names)
    return DatasetSplits(train=data.subset(tr), test=data.subset(te), info=info)
