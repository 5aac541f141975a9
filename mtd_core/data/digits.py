"""scikit-learn's handwritten digits: 1797 grey 8x8 images of 0..9 that ship inside the scikit-learn wheel.

Small enough to train a recognisable image + label model on a CPU in minutes, so it is the default dataset of
every example config and of ``mtd demo``. Nothing is downloaded.
"""

from __future__ import annotations

import torch

from mtd_core.data.splits import ArrayDataset, DatasetSplits, images_to_unit_range, split_indices

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> DatasetSplits:
    """The digits as fields "image" (float32 (1, 8, 8) in [-1, 1], from the raw 0..16 intensities) and "label".

    Args:
        seed: seeds the train/test partition (the same seed always gives the same split).
        test_fraction: share of the 1797 examples held out as the test split.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    raw = sk_load_digits()
    images = images_to_unit_range(torch.from_numpy(raw.images.copy()), 16.0).unsqueeze(1)
    labels = torch.from_numpy(raw.target.copy()).long()
    source = "digits (sklearn.datasets.load_digits)"
    data = ArrayDataset({"image": images, "label": labels}, source)
    train_idx, test_idx = split_indices(len(data), test_fraction, seed, source)
    info = {"name": "digits", "source": source, "num_classes": 10, "class_names": DIGIT_NAMES,
            "image_shape": [1, 8, 8], "train_size": len(train_idx), "test_size": len(test_idx)}
    return DatasetSplits(train=data.subset(train_idx), test=data.subset(test_idx), info=info)
