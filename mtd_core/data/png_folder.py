"""A folder of PNG images with a CSV of labels (and optionally captions and a train/test column).

The CSV has a header row; ``filename`` (relative to the folder) and ``label`` (an integer class index) are
required; ``caption`` (free text) and ``split`` ("train" or "test") are optional. Images are read with Pillow,
converted to grey (channels = 1) or RGB (channels = 3) and scaled from [0, 255] to [-1, 1]; all must have the
same size.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from mtd_core.data.splits import ArrayDataset, DatasetSplits, images_to_unit_range, split_indices
from mtd_core.errors import ModalityDataError
from mtd_core.imageio import read_image

REQUIRED_COLUMNS = ("filename", "label")


def _read_csv(csv_path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """The labels CSV's rows and columns, after checking its encoding and required columns."""
    try:  # utf-8-sig: a byte-order mark, as spreadsheet programs write it, is not part of the first column's name
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
            columns = list(rows[0].keys()) if rows else []
    except UnicodeDecodeError as e:
        raise ModalityDataError(f"{csv_path}: the labels CSV is not UTF-8 text (byte {e.start}: {e.reason}); save it "
                                "as UTF-8") from None
    except (OSError, csv.Error) as e:
        raise ModalityDataError(f"{csv_path}: cannot read the labels CSV: {e}") from None
    if not rows:
        raise ModalityDataError(f"{csv_path}: the labels CSV has no rows")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ModalityDataError(f"{csv_path}: missing column(s) {missing}; the header must include "
                                f"{list(REQUIRED_COLUMNS)} (optional: caption, split), got {columns}")
    return rows, columns


def load_png_folder(folder: str, labels: str = "labels.csv", channels: int = 1, test_fraction: float = 0.1,
                    seed: int = 0, class_names: list[str] | None = None) -> DatasetSplits:
    """Images and labels (and captions) from a folder of PNG files and a CSV.

    Args:
        folder: the folder holding the images.
        labels: the CSV file, relative to ``folder`` or absolute.
        channels: 1 (grey) or 3 (RGB): the images are converted to this.
        test_fraction: share held out as the test split when the CSV has no ``split`` column.
        seed: seeds that split.
        class_names: display names of the classes (index -> name), for captions and grids.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ModalityDataError(f"{root}: folder not found (dataset 'png_folder', option 'folder')")
    if channels not in (1, 3):
        raise ModalityDataError(f"png_folder {root}: channels must be 1 or 3, got {channels}")
    csv_path = Path(labels) if Path(labels).is_absolute() else root / labels
    rows, columns = _read_csv(csv_path)
    images: list[np.ndarray] = []
    label_list: list[int] = []
    captions: list[str] = []
    splits: list[str] = []
    for line, row in enumerate(rows, start=2):
        try:
            label = int(row["label"])
        except (TypeError, ValueError):
            raise ModalityDataError(f"{csv_path}, line {line}: label {row['label']!r} is not an integer") from None
        if label < 0:
            raise ModalityDataError(f"{csv_path}, line {line}: label {label} is negative")
        path = root / row["filename"]
        img = read_image(path, channels, f"{csv_path}, line {line}")
        if images and img.shape != images[0].shape:
            raise ModalityDataError(f"{path}: image has shape {img.shape[1:]} (H, W), but {root / rows[0]['filename']}"
                                    f" has {images[0].shape[1:]}; all images must have the same size")
        images.append(img)
        label_list.append(label)
        captions.append(row.get("caption") or "")
        split = (row.get("split") or "").strip().lower()
        if "split" in columns and split not in ("train", "test"):
            raise ModalityDataError(f"{csv_path}, line {line}: split must be 'train' or 'test', got {row['split']!r}")
        splits.append(split)
    fields: dict = {"image": images_to_unit_range(torch.from_numpy(np.stack(images)), 255.0),
                    "label": torch.tensor(label_list, dtype=torch.long)}
    if "caption" in columns:
        fields["caption"] = captions
    rows_named = [f"line {line} ({row['filename']})" for line, row in enumerate(rows, start=2)]
    data = ArrayDataset(fields, str(csv_path), rows_named)
    if "split" in columns:
        tr = torch.tensor([i for i, s in enumerate(splits) if s == "train"], dtype=torch.long)
        te = torch.tensor([i for i, s in enumerate(splits) if s == "test"], dtype=torch.long)
        if len(tr) == 0 or len(te) == 0:
            raise ModalityDataError(f"{csv_path}: the split column must mark at least one 'train' and one 'test' row")
    else:
        tr, te = split_indices(len(data), test_fraction, seed, str(csv_path))
    info = {"name": "png_folder", "source": str(root), "image_shape": list(images[0].shape),
            "num_classes": max(label_list) + 1, "train_size": len(tr), "test_size": len(te)}
    if class_names:
        info["class_names"] = list(class_names)
    return DatasetSplits(train=data.subset(tr), test=data.subset(te), info=info)
