"""From a ``[dataset]`` config table to data: the registered factory, the ``keys`` renaming, the transforms.

    [dataset]
    name = "digits"                      # a registered dataset (mtd_plugins/datasets.py or a third-party plugin)
    keys = { image = "image" }           # dataset field -> batch key (a task-set modality name); others keep theirs
    transforms = [ { kind = "edges", source = "image", into = "edges" } ]
    seed = 0                             # every other key is an option of the dataset's factory
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs
import torch

from mtd_core.data.options import check_option_values
from mtd_core.data.splits import ArrayDataset, DatasetSplits, Examples, hold_out
from mtd_core.data.transforms import apply_transforms, build_transform
from mtd_core.errors import ConfigError, ModalityDataError, closest
from mtd_core.types import Batch, BatchTransform, BatchValue, ConfigDict, ConfigMapping

if TYPE_CHECKING:
    from mtd_core.plugins.registry import Registry

RESERVED = ("name", "keys", "transforms", "holdout")


def factory_defaults(factory: Callable[..., object]) -> ConfigDict:
    """The keyword options of a factory with their defaults (parameters without a default map to None)."""
    out: ConfigDict = {}
    for p in inspect.signature(factory).parameters.values():
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        out[p.name] = None if p.default is inspect.Parameter.empty else p.default
    return out


def check_options(what: str, factory: Callable[..., object], options: ConfigMapping) -> None:
    """Raise a ConfigError naming ``what`` for options the factory does not accept (with the nearest valid one)."""
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL,)]
    for key in options:
        if key not in valid:
            raise ConfigError(f"{what}: unknown option {key!r}{closest(key, valid)}; valid options: {sorted(valid)}")


@attrs.frozen
class DatasetConfig:
    """The ``[dataset]`` table.

    Args:
        name: the registered dataset name ("digits", "fashion_mnist", "npz", "png_folder", or a plugin's).
        keys: dataset field -> batch key renaming (e.g. {"image": "photo"}); unlisted fields keep their names.
        transforms: transform configs applied to every batch, in order (see mtd_core/data/transforms.py).
        holdout: the last ``holdout`` training examples form the validation split (``DatasetSplits.val``), never
            trained on; 0 (the default): no validation split.
        options: every other key: keyword options of the dataset's factory.
    """

    name: str = "digits"
    keys: dict[str, str] = attrs.field(factory=dict)
    transforms: list[ConfigDict] = attrs.field(factory=list)
    options: ConfigDict = attrs.field(factory=dict)
    holdout: int = 0

    @classmethod
    def from_dict(cls, d: ConfigMapping) -> DatasetConfig:
        """From the flat table (``name``, ``keys``, ``transforms`` and the factory's options side by side)."""
        d = dict(d)
        keys = d.pop("keys", {})
        transforms = d.pop("transforms", [])
        if not isinstance(keys, Mapping) or not all(isinstance(v, str) and v for v in keys.values()):
            raise ConfigError(f"dataset.keys must be a table of field = \"name\" strings, got {keys!r}")
        if not isinstance(transforms, (list, tuple)) or not all(isinstance(t, Mapping) for t in transforms):
            raise ConfigError(f"dataset.transforms must be a list of tables with a 'kind', got {transforms!r}")
        holdout = d.pop("holdout", 0)
        if isinstance(holdout, bool) or not isinstance(holdout, int) or holdout < 0:
            raise ConfigError(f"dataset.holdout: expected an integer >= 0 (the last training examples kept out of "
                              f"training as the validation split), got {holdout!r}")
        name = d.pop("name", "digits")
        if not isinstance(name, str):
            raise ConfigError(f"dataset.name: expected the name of a registered dataset (a string), got {name!r}")
        return cls(name=name, keys=dict(keys), transforms=[dict(t) for t in transforms],
                   options=d, holdout=holdout)

    def to_dict(self) -> ConfigDict:
        """The flat table; :meth:`from_dict` inverts it."""
        return {"name": self.name, "keys": dict(self.keys), "transforms": [dict(t) for t in self.transforms],
                **({"holdout": self.holdout} if self.holdout else {}), **self.options}


@attrs.frozen
class LoadedData:
    """A dataset ready for training.

    Args:
        splits: the train/test splits, fields already renamed by the config's ``keys``.
        transforms: the batch transforms of the config, applied by :meth:`batch`.
        config: the dataset config it was loaded from (None when built directly from DatasetSplits).
    """

    splits: DatasetSplits
    transforms: list[BatchTransform] = attrs.field(factory=list)
    config: DatasetConfig | None = None

    @property
    def info(self) -> ConfigDict:
        """The factory's info dict."""
        return self.splits.info

    def batch(self, dataset: Examples, indices: torch.Tensor) -> Batch:
        """The examples at ``indices`` of ``dataset`` (train or test), collated and transformed."""
        return apply_transforms(self.transforms, fetch(dataset, indices))


def collate(items: Sequence[Mapping[str, BatchValue]]) -> Batch:
    """Stack a list of item dicts into a batch: tensors are stacked, strings become lists."""
    out: Batch = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
            out[key] = torch.tensor(values)
        else:
            out[key] = list(values)
    return out


def fetch(dataset: Examples, indices: torch.Tensor) -> Batch:
    """A collated batch of ``dataset`` at ``indices`` (a dataset with ``get_batch``, in memory or packed, reads the
    batch at once)."""
    get_batch = getattr(dataset, "get_batch", None)
    if callable(get_batch):
        batch: Batch = get_batch(indices)
        return batch
    return collate([dataset[int(i)] for i in indices])


def resolve_dataset_config(config: ConfigMapping, registry: Registry) -> DatasetConfig:
    """The dataset config with every factory option present (defaults filled in), validated."""
    dc = DatasetConfig.from_dict(config)
    factory = _factory(dc.name, registry)
    check_options(f"dataset {dc.name!r}", factory, dc.options)
    check_option_values("dataset", factory, dc.options)
    transforms = [build_transform(t, registry.table("transform")).to_config() for t in dc.transforms]
    options = {**factory_defaults(factory), **dc.options}
    return DatasetConfig(name=dc.name, keys=dc.keys, transforms=transforms, options=options, holdout=dc.holdout)


def _factory(name: str, registry: Registry) -> Callable[..., DatasetSplits]:
    try:
        return registry.dataset(name)
    except Exception as e:  # the registry's own error lists the known names
        raise ConfigError(f"dataset.name: {e}") from None


def load_dataset(config: ConfigMapping | DatasetConfig, registry: Registry) -> LoadedData:
    """Call the dataset's factory with its options, rename fields by ``keys``, and build the transforms."""
    dc = config if isinstance(config, DatasetConfig) else DatasetConfig.from_dict(config)
    factory = _factory(dc.name, registry)
    check_options(f"dataset {dc.name!r}", factory, dc.options)
    check_option_values("dataset", factory, dc.options)
    splits = factory(**dc.options)
    if not isinstance(splits, DatasetSplits):
        raise ModalityDataError(f"dataset {dc.name!r}: its factory returned {type(splits).__name__}, "
                                "expected mtd_core.data.DatasetSplits")
    if dc.keys:
        if not (isinstance(splits.train, ArrayDataset) and isinstance(splits.test, ArrayDataset)):
            raise ConfigError(f"dataset {dc.name!r}: the 'keys' option needs an in-memory dataset (ArrayDataset)")
        splits = DatasetSplits(train=splits.train.renamed(dc.keys), test=splits.test.renamed(dc.keys),
                               info=splits.info)
    splits = hold_out(splits, dc.holdout, "dataset")
    kinds = registry.table("transform")
    transforms = [build_transform(t, kinds) for t in dc.transforms]
    # a transform may read the dataset's info (e.g. the captions transform its class names) through with_info(info)
    transforms = [tf.with_info(splits.info) if hasattr(tf, "with_info") else tf for tf in transforms]
    return LoadedData(splits=splits, transforms=transforms, config=dc)
