"""Datasets (items are dicts keyed by modality name), batch transforms, derivation and the resumable sampler."""

from mtd_core.data.build import DatasetConfig, LoadedData, collate, fetch, load_dataset, resolve_dataset_config
from mtd_core.data.check import check_against_taskset, check_images, check_labels
from mtd_core.data.derive import derive_batch, model_inputs
from mtd_core.data.digits import DIGIT_NAMES, load_digits
from mtd_core.data.idx import FASHION_MNIST_CLASSES, find_fashion_mnist, load_fashion_mnist, read_idx, write_idx
from mtd_core.data.npz import load_npz, read_npz
from mtd_core.data.png_folder import load_png_folder
from mtd_core.data.sampler import ResumableSampler
from mtd_core.data.splits import ArrayDataset, DatasetSplits, split_indices
from mtd_core.data.transforms import TRANSFORMS, EdgesTransform, apply_transforms, build_transform

__all__ = [
    "DIGIT_NAMES",
    "FASHION_MNIST_CLASSES",
    "TRANSFORMS",
    "ArrayDataset",
    "DatasetConfig",
    "DatasetSplits",
    "EdgesTransform",
    "LoadedData",
    "ResumableSampler",
    "apply_transforms",
    "build_transform",
    "check_against_taskset",
    "check_images",
    "check_labels",
    "collate",
    "derive_batch",
    "fetch",
    "find_fashion_mnist",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_npz",
    "load_png_folder",
    "model_inputs",
    "read_idx",
    "read_npz",
    "resolve_dataset_config",
    "split_indices",
    "write_idx",
]
