"""In-memory datasets of named fields and the train/test pair every dataset factory returns.

Items are dicts keyed by field name ("image": float32 (C, H, W) in [-1, 1], "label": int64 scalar, ...). After
the ``keys`` mapping of a dataset config (mtd_core/data/build.py) the field names are the task set's modality
names, so a batch can go straight to the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import attrs
import torch
from torch.utils.data import Dataset

from mtd_core.data.options import check_seed
from mtd_core.errors import ConfigError, ModalityDataError
from mtd_core.types import BatchValue, ConfigDict

Field = torch.Tensor | list[str]


class ArrayDataset(Dataset):
    """A dataset of equally long fields held in memory: tensors (first dimension = example) or lists of str.

    Args:
        fields: field name -> a tensor whose first dimension indexes examples, or a list of strings (captions).
        source: where the data came from (a file, folder or built-in name), quoted in every error message.
        rows: where each example sits in ``source`` ("row 199", "line 12 (shirt.png)"), so that an error names
            the file's own row whatever split or order the example is in now; default "row <its index>".
    """

    def __init__(self, fields: Mapping[str, Field], source: str, rows: Sequence[str] | None = None) -> None:
        if not fields:
            raise ModalityDataError(f"{source}: a dataset needs at least one field")
        lengths = {k: len(v) for k, v in fields.items()}
        if len(set(lengths.values())) != 1:
            raise ModalityDataError(
                f"{source}: every field must have one entry per example, got lengths {lengths}"
            )
        self.fields: dict[str, Field] = dict(fields)
        self.source = source
        n = next(iter(lengths.values()))
        self.rows: list[str] = list(rows) if rows is not None else [f"row {i}" for i in range(n)]
        if len(self.rows) != n:
            raise ModalityDataError(f"{source}: {len(self.rows)} row names for {n} examples")

    def where(self, index: int) -> str:
        """The source and the row of example ``index``, as error messages name it."""
        return f"{self.source}, {self.rows[index]}"

    def __len__(self) -> int:
        return len(next(iter(self.fields.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        return {k: v[index] for k, v in self.fields.items()}

    def get_batch(self, indices: torch.Tensor) -> dict[str, Field]:
        """The examples at ``indices`` already stacked: field -> (B, ...) tensor or list of str."""
        idx = indices.long()
        out: dict[str, Field] = {}
        for k, v in self.fields.items():
            out[k] = v[idx] if isinstance(v, torch.Tensor) else [v[i] for i in idx.tolist()]
        return out

    def subset(self, indices: torch.Tensor | Sequence[int]) -> ArrayDataset:
        """A new dataset holding only ``indices`` (in that order); each example keeps its row name."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ArrayDataset(self.get_batch(idx), self.source, [self.rows[i] for i in idx.tolist()])

    def renamed(self, keys: Mapping[str, str]) -> ArrayDataset:
        """The same data with fields renamed by ``keys`` (dataset field -> batch key); others keep their name."""
        missing = [k for k in keys if k not in self.fields]
        if missing:
            raise ModalityDataError(
                f"{self.source}: the dataset option 'keys' names fields {missing} that the dataset does not have; "
                f"its fields are {sorted(self.fields)}"
            )
        out = {keys.get(k, k): v for k, v in self.fields.items()}
        if len(out) != len(self.fields):
            raise ModalityDataError(f"{self.source}: the 'keys' mapping {dict(keys)} maps two fields to one name")
        return ArrayDataset(out, self.source, self.rows)


@runtime_checkable
class Examples(Protocol):
    """What a split must be: a map-style dataset with a length (a torch ``Dataset`` defining ``__len__``, such as
    :class:`ArrayDataset`), whose items are dicts keyed by field name."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Mapping[str, BatchValue]: ...


@attrs.frozen
class DatasetSplits:
    """What a dataset factory returns.

    Args:
        train: the training examples (items are dicts keyed by field name).
        test: held-out examples of the same fields (evaluation, accuracy, the ELBO in bits/dim).
        info: JSON-representable facts about the data: "name", "source", and where known "num_classes",
            "class_names", "image_shape". Used for captions in sample grids and for reports.
        val: the validation split, carved out of the training examples by a dataset config's ``holdout`` and
            never trained on (every design choice is made on it; the test split is read once per claim); None
            without a holdout.
    """

    train: Examples
    test: Examples
    info: ConfigDict = attrs.field(factory=dict)
    val: Examples | None = None


def split_indices(n: int, test_fraction: float, seed: int, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic (train, test) partition of range(n): a seeded permutation, the first part is the test set."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"{source}: test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}")
    check_seed(f"{source}: seed", seed)
    n_test = max(1, round(n * test_fraction))
    if n_test >= n:
        raise ModalityDataError(f"{source}: {n} examples are too few to hold out {test_fraction:.0%} for testing")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


class _Slice:
    """Examples ``start <= i < stop`` of a map-style dataset that is not in memory (in-memory ones use subset)."""

    def __init__(self, dataset: Examples, start: int, stop: int) -> None:
        self.dataset, self.start, self.stop = dataset, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int) -> Mapping[str, BatchValue]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        return self.dataset[self.start + index]


def hold_out(splits: DatasetSplits, n: object, where: str) -> DatasetSplits:
    """The splits with the last ``n`` training examples moved to a validation split (``val``), which training
    never sees; ``n = 0`` returns them unchanged. Deterministic: the same examples for every seed and run."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"{where}.holdout: expected an integer >= 0 (the last training examples kept out of "
                          f"training as the validation split), got {n!r}")
    if n == 0:
        return splits
    if splits.val is not None:
        raise ConfigError(f"{where}.holdout = {n}: this dataset already has a validation split; drop holdout")
    total = len(splits.train)
    if n >= total:
        raise ConfigError(f"{where}.holdout = {n} leaves nothing to train on: the training split has {total} "
                          "examples")
    keep = total - n
    train: Examples
    val: Examples
    if isinstance(splits.train, ArrayDataset):
        train, val = splits.train.subset(range(keep)), splits.train.subset(range(keep, total))
    else:
        train, val = _Slice(splits.train, 0, keep), _Slice(splits.train, keep, total)
    info = {**splits.info, "train_size": keep, "val_size": n}
    return DatasetSplits(train=train, test=splits.test, info=info, val=val)


def images_to_unit_range(x: torch.Tensor, maximum: float) -> torch.Tensor:
    """Integer-valued pixels in [0, maximum] -> float32 in [-1, 1] (x / maximum * 2 - 1)."""
    return (x.to(torch.float32) / float(maximum)) * 2.0 - 1.0
