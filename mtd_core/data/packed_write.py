"""Packing a dataset into the on-disk format of packed_format.py (``mtd data pack``).

The ``[dataset]`` table is loaded as training would load it (its factory, ``keys`` renaming and ``holdout``
applied) and every split is written shard by shard, a few thousand examples at a time, so a source that is not
held in memory (a plugin's dataset) never is. Transforms are not applied: they stay in the config that reads the
packed data, so derived fields are computed (and random ones drawn) at training time, as for in-memory data.

Each shard file is written under a temporary name, flushed, fsync'ed and renamed into place; the manifest is
written last the same way, so a folder without a manifest is an unfinished pack and is refused by the reader.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import numpy as np
import torch

from mtd_core.data.build import DatasetConfig, fetch, load_dataset
from mtd_core.data.packed_format import (
    MANIFEST,
    TORCH_DTYPES,
    FieldSpec,
    Manifest,
    Shard,
    ShardFile,
    file_sha256,
    file_stem,
)
from mtd_core.data.splits import Examples, images_to_unit_range
from mtd_core.errors import ConfigError, ModalityDataError
from mtd_core.types import BatchValue, ConfigMapping

if TYPE_CHECKING:
    from mtd_core.plugins.registry import Registry

CHUNK = 2048  # examples read from the source and written at a time
_NARROW = ("uint8", "int16", "int32", "int64")


class _Unfit(Exception):
    """A chunk that a field's storage plan (decided on the first examples) cannot hold bit for bit."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def quantized(x: torch.Tensor, scale: int) -> torch.Tensor | None:
    """``x`` as uint8 q with ``images_to_unit_range(q, scale)`` equal to ``x`` bit for bit, or None."""
    x = x.contiguous()
    if not bool(((x >= -1.0) & (x <= 1.0)).all()):
        return None
    q = torch.round((x + 1.0) / 2.0 * scale)
    if not torch.equal(images_to_unit_range(q, scale).view(torch.int32), x.view(torch.int32)):
        return None
    return q.to(torch.uint8)


def unit_scale(x: torch.Tensor) -> int | None:
    """The scale in 1..255 (255 first) at which the float32 values ``x`` are exactly 8-bit pixels, or None."""
    if x.numel() == 0 or not bool(((x >= -1.0) & (x <= 1.0)).all()):
        return None
    return next((m for m in (255, *range(1, 255)) if quantized(x, m) is not None), None)


def _narrowest(x: torch.Tensor, dtype: str) -> str:
    """The narrowest integer dtype (no wider than ``dtype``) holding every value of ``x``."""
    lo, hi = (int(x.min()), int(x.max())) if x.numel() else (0, 0)
    width = np.dtype(dtype).itemsize
    for name in _NARROW:
        info = np.iinfo(name)
        if np.dtype(name).itemsize <= width and info.min <= lo and hi <= info.max:
            return name
    return dtype


def plan_field(name: str, value: BatchValue, forced: set[str]) -> FieldSpec:
    """How field ``name`` is stored, decided on its first examples ``value`` (``forced``: fields stored as they
    are, because a later chunk did not fit their first plan)."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return FieldSpec(kind="text")
    if not isinstance(value, torch.Tensor) or value.ndim == 0:
        raise ModalityDataError(f"field {name!r} holds {type(value).__name__} values; a packed field must be a "
                                "tensor (one array per example) or text (one string per example)")
    dtype = str(value.dtype).removeprefix("torch.")
    if dtype not in TORCH_DTYPES:
        raise ModalityDataError(f"field {name!r} has dtype {dtype}, which the packed format does not store; "
                                f"expected one of {sorted(TORCH_DTYPES)} (convert it, e.g. to float32)")
    shape, stored, scale = tuple(value.shape[1:]), dtype, None
    if name in forced:
        pass
    elif dtype == "float32":
        scale = unit_scale(value[:64])
        stored = "uint8" if scale is not None else dtype
    elif dtype != "bool" and not value.is_floating_point():
        stored = _narrowest(value, dtype)
    return FieldSpec(kind="tensor", dtype=dtype, shape=shape, stored=stored, scale=scale)


def encode(spec: FieldSpec, value: BatchValue, name: str, where: str) -> np.ndarray | list[bytes]:
    """The chunk ``value`` of field ``name`` as stored (text: UTF-8 bytes per example); _Unfit when it does not
    fit the field's plan, a ModalityDataError naming ``where`` when it disagrees with the first examples."""
    if spec.kind == "text":
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ModalityDataError(f"{where}: field {name!r} is not text here, but the first examples' is")
        try:
            return [v.encode("utf-8") for v in value]
        except UnicodeEncodeError as e:
            raise ModalityDataError(f"{where}: field {name!r} holds a string that is not valid Unicode ({e})") from None
    dtype = str(value.dtype).removeprefix("torch.") if isinstance(value, torch.Tensor) else type(value).__name__
    if not isinstance(value, torch.Tensor) or tuple(value.shape[1:]) != spec.shape or dtype != spec.dtype:
        shape = tuple(value.shape[1:]) if isinstance(value, torch.Tensor) else "-"
        raise ModalityDataError(f"{where}: field {name!r} has examples of shape {shape} and dtype {dtype}, but the "
                                f"first examples' are {spec.shape} and {spec.dtype}; every example of every split "
                                "must agree")
    if spec.scale is not None:
        q = quantized(value, spec.scale)
        if q is None:
            raise _Unfit(name)
        return q.numpy()
    if spec.stored != spec.dtype:
        info = np.iinfo(spec.stored)
        if value.numel() and not info.min <= int(value.min()) <= int(value.max()) <= info.max:
            raise _Unfit(name)
        return value.to(TORCH_DTYPES[spec.stored]).numpy()
    return value.contiguous().numpy()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _place(tmp: Path, final: Path, root: Path) -> ShardFile:
    """fsync ``tmp``, rename it to ``final``; its manifest entry."""
    _fsync(tmp)
    os.replace(tmp, final)
    return ShardFile(path=final.relative_to(root).as_posix(), bytes=final.stat().st_size, sha256=file_sha256(final))


class _ShardWriter:
    """The files of one shard: tensor fields filled in place through a memory map, text gathered then saved."""

    def __init__(self, root: Path, split: str, k: int, n: int, fields: Mapping[str, FieldSpec]) -> None:
        self.root, self.fields = root, fields
        self.final = {name: [root / split / f"{file_stem(name, i)}-{k:05d}{sfx}" for sfx in spec.suffixes]
                      for i, (name, spec) in enumerate(fields.items())}
        self.maps: dict[str, np.memmap] = {}
        self.texts: dict[str, list[bytes]] = {}
        for name, spec in fields.items():
            if spec.kind == "text":
                self.texts[name] = []
            else:
                self.maps[name] = np.lib.format.open_memmap(self._tmp(name, 0), mode="w+", dtype=spec.stored,
                                                            shape=(n, *spec.shape))

    def _tmp(self, name: str, i: int) -> Path:
        return self.final[name][i].with_name(self.final[name][i].name + ".partial")

    def put(self, offset: int, chunk: Mapping[str, np.ndarray | list[bytes]]) -> None:
        for name, value in chunk.items():
            if isinstance(value, list):
                self.texts[name].extend(value)
            else:
                self.maps[name][offset:offset + len(value)] = value

    def finish(self) -> dict[str, list[ShardFile]]:
        out: dict[str, list[ShardFile]] = {}
        for name in list(self.maps):
            mm = self.maps.pop(name)
            mm.flush()
            del mm  # unmapped before the file is fsync'ed and renamed
            out[name] = [_place(self._tmp(name, 0), self.final[name][0], self.root)]
        for name, items in self.texts.items():
            offsets = np.zeros(len(items) + 1, dtype=np.int64)
            np.cumsum([len(b) for b in items], out=offsets[1:])
            blob = np.frombuffer(b"".join(items), dtype=np.uint8)
            arrays: tuple[np.ndarray, np.ndarray] = (offsets, blob)
            for i, arr in enumerate(arrays):
                with open(self._tmp(name, i), "wb") as fh:
                    np.save(fh, arr)
            out[name] = [_place(self._tmp(name, i), self.final[name][i], self.root) for i in range(2)]
        return out


def _update_range(ranges: dict[str, tuple[float, float, bool]], name: str, value: BatchValue) -> None:
    """Fold the chunk ``value`` of field ``name`` into its (min, max, all finite) over the finite values."""
    if not isinstance(value, torch.Tensor) or not value.numel():
        return
    x = value.double() if value.is_floating_point() else value.long()
    finite = torch.isfinite(x) if value.is_floating_point() else torch.ones_like(x, dtype=torch.bool)
    lo, hi, ok = ranges.get(name, (math.inf, -math.inf, True))
    if bool(finite.any()):
        kept = x[finite]
        lo, hi = min(lo, kept.min().item()), max(hi, kept.max().item())
    ranges[name] = (lo, hi, ok and bool(finite.all()))


def _with_ranges(spec: FieldSpec, found: tuple[float, float, bool] | None) -> FieldSpec:
    if spec.kind == "text" or found is None:
        return spec
    lo, hi, finite = found
    known = math.isfinite(lo)
    return attrs.evolve(spec, low=lo if known else None, high=hi if known else None, finite=finite)


def _per_shard(fields: Mapping[str, FieldSpec], first: Mapping[str, BatchValue], shard_mb: int) -> int:
    """Examples per shard so that a shard holds about ``shard_mb`` MiB (text estimated from the first examples)."""
    size = 0.0
    for name, spec in fields.items():
        value = first[name]
        if spec.kind == "text" and isinstance(value, list):
            size += 8 + sum(len(v.encode("utf-8", "replace")) for v in value) / max(1, len(value))
        else:
            size += math.prod(spec.shape) * np.dtype(spec.stored).itemsize
    return max(1, int(shard_mb * 2**20 // max(size, 1.0)))


def _write_splits(root: Path, splits: Mapping[str, Examples], forced: set[str], shard_mb: int,
                  shard_examples: int | None, bar: object) -> tuple[dict[str, FieldSpec], dict[str, list[Shard]]]:
    """Write every split's shards; the fields' plans and each split's shards."""
    first = fetch(splits["train"], torch.arange(min(CHUNK, len(splits["train"]))))
    fields = {name: plan_field(name, value, forced) for name, value in first.items()}
    per_shard = shard_examples or _per_shard(fields, first, shard_mb)
    out: dict[str, list[Shard]] = {}
    ranges: dict[str, tuple[float, float, bool]] = {}
    for split, ds in splits.items():
        (root / split).mkdir()
        source = getattr(ds, "source", split)
        shards: list[Shard] = []
        for k, start in enumerate(range(0, len(ds), per_shard)):
            stop = min(len(ds), start + per_shard)
            writer = _ShardWriter(root, split, k, stop - start, fields)
            for a in range(start, stop, CHUNK):
                b = min(stop, a + CHUNK)
                batch = fetch(ds, torch.arange(a, b))
                where = f"{source} (split {split!r}, examples {a}..{b - 1})"
                if set(batch) != set(fields):
                    raise ModalityDataError(f"{where}: has fields {sorted(batch)}, but the first examples of the "
                                            f"training split have {sorted(fields)}; every split must have the same")
                writer.put(a - start, {name: encode(spec, batch[name], name, where) for name, spec in fields.items()})
                for name in fields:
                    _update_range(ranges, name, batch[name])
                bar.update(b - a)  # type: ignore[attr-defined]
            shards.append(Shard(start=start, stop=stop, files=writer.finish()))
        _fsync(root / split)  # the renames of its shard files are durable
        out[split] = shards
    return {name: _with_ranges(spec, ranges.get(name)) for name, spec in fields.items()}, out


def check_pack_target(out: str | Path) -> Path:
    """``out`` as the folder to pack into: a ConfigError when it is a file or a folder that is not empty."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: is an existing file; OUT must name a new or empty folder")
    if path.is_dir() and any(path.iterdir()):
        raise ConfigError(f"{path}: exists and is not empty; pack into a new or empty folder (packing never "
                          "overwrites: delete the folder first to pack again)")
    return path


def _clear(root: Path, created: bool) -> None:
    for child in root.iterdir() if root.is_dir() else ():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    if created and root.is_dir():
        root.rmdir()


def pack_dataset(config: ConfigMapping | DatasetConfig, registry: Registry, out: str | Path, *, shard_mb: int = 256,
                 shard_examples: int | None = None, progress: bool = True,
                 source: ConfigMapping | None = None) -> Manifest:
    """Pack the dataset of ``config`` (a ``[dataset]`` table) into the new or empty folder ``out``.

    Args:
        config: the dataset table; its factory, ``keys`` and ``holdout`` are applied, its transforms are not.
        registry: the plugin registry the dataset's factory comes from.
        out: the folder to write (refused when it exists and is not empty).
        shard_mb: about how many MiB one shard file of all fields together holds.
        shard_examples: examples per shard instead (exact; None: from ``shard_mb``).
        progress: show a progress bar (stderr) over every example of every split.
        source: the dataset config recorded in the manifest (default: ``config`` as given).
    Returns the manifest written. On any failure (Ctrl-C included) everything written is removed again.
    """
    if isinstance(shard_mb, bool) or not isinstance(shard_mb, int) or shard_mb < 1:
        raise ConfigError(f"--shard-mb: expected a positive integer (MiB per shard), got {shard_mb!r}")
    if shard_examples is not None and (isinstance(shard_examples, bool) or not isinstance(shard_examples, int)
                                       or shard_examples < 1):
        raise ConfigError(f"shard_examples: expected a positive integer or None, got {shard_examples!r}")
    root = check_pack_target(out)
    dc = config if isinstance(config, DatasetConfig) else DatasetConfig.from_dict(config)
    data = load_dataset(dc, registry)
    splits: dict[str, Examples] = {"train": data.splits.train, "test": data.splits.test}
    if data.splits.val is not None:
        splits["val"] = data.splits.val
    from tqdm.auto import tqdm

    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    forced: set[str] = set()
    try:
        while True:
            with tqdm(total=sum(len(s) for s in splits.values()), desc="pack", unit="ex", disable=not progress,
                      dynamic_ncols=True) as bar:
                try:
                    fields, shards = _write_splits(root, splits, forced, shard_mb, shard_examples, bar)
                    break
                except _Unfit as e:  # a later chunk did not fit the first examples' plan: store that field as is
                    forced.add(e.field)
                    _clear(root, created=False)
        manifest = Manifest(fields=fields, splits=shards, source=dict(source if source is not None else dc.to_dict()),
                            info=dict(data.info))
        tmp = root / f"{MANIFEST}.partial"
        tmp.write_text(json.dumps(manifest.to_dict(), indent=1, default=str) + "\n", encoding="utf-8")
        _place(tmp, root / MANIFEST, root)
        _fsync(root)
    except BaseException:
        _clear(root, created)
        raise
    return manifest
