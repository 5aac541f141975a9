"""The packed dataset format (``mtd data pack``): per-field ``.npy`` shards and a ``manifest.json``.

    OUT/manifest.json                       format, version, fields, splits and their shards, source config, info
    OUT/train/image-00000.npy               examples [start, stop) of field "image" of split "train"
    OUT/train/caption-00000.offsets.npy     a text field: int64 offsets (n + 1) into ...
    OUT/train/caption-00000.bytes.npy       ... the UTF-8 bytes of its n strings, back to back

Every field of a split shares the same shard boundaries, so the shard of example i is found once for all fields.
A tensor field is stored in the narrowest dtype that gives back the in-memory tensor bit for bit: images in [-1, 1]
that came from 8-bit (or 0..16) pixels as uint8 with their ``scale`` (decoded by ``images_to_unit_range``), small
integers (labels) as uint8 / int16 / int32, everything else as it is. This module holds the manifest's structure and
its checks; packed_write.py writes it, packed.py reads it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import attrs
import numpy as np
import torch

from mtd_core.errors import ModalityDataError
from mtd_core.types import ConfigDict

FORMAT = "mtd-packed"
VERSION = 1
MANIFEST = "manifest.json"
TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "int64": torch.int64,
                "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
                "bool": torch.bool}
"""The tensor dtypes a packed field may have (by name), and the torch dtype of each."""
T = TypeVar("T")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def file_stem(name: str, index: int) -> str:
    """The file name stem of field ``name`` (its ``index``-th field): the name itself when it is a plain file name,
    else ``field<index>`` (the manifest maps fields to files, so nothing is derived from a name when reading)."""
    return name if _SAFE_NAME.fullmatch(name) else f"field{index}"


@attrs.frozen
class FieldSpec:
    """One field of every example.

    Args:
        kind: "tensor" (one array per example) or "text" (one UTF-8 string per example).
        dtype: the torch dtype name a batch gives back ("float32", "int64", ...); "" for text.
        shape: the shape of one example's array; () for a scalar (a label) and for text.
        stored: the numpy dtype name of the shards ("uint8", "float32", ...); "" for text.
        scale: a stored uint8 q reads back as ``images_to_unit_range(q, scale)``; None: a plain cast to ``dtype``.
        low, high: the smallest and largest finite value over every split (None for text or when unknown), so
            that the task set's ranges are checked without reading the data.
        finite: whether every value is finite (no NaN or infinity).
    """

    kind: str
    dtype: str = ""
    shape: tuple[int, ...] = ()
    stored: str = ""
    scale: int | None = None
    low: float | None = None
    high: float | None = None
    finite: bool = True

    @property
    def suffixes(self) -> tuple[str, ...]:
        """The file suffixes of one shard of this field."""
        return (".offsets.npy", ".bytes.npy") if self.kind == "text" else (".npy",)

    def to_dict(self) -> ConfigDict:
        return {"kind": self.kind, "dtype": self.dtype, "shape": list(self.shape), "stored": self.stored,
                "scale": self.scale, "min": self.low, "max": self.high, "finite": self.finite}


@attrs.frozen
class ShardFile:
    """One file of a shard: its path relative to the dataset folder, size in bytes and SHA-256 (hex)."""

    path: str
    bytes: int
    sha256: str


@attrs.frozen
class Shard:
    """Examples ``start <= i < stop`` of a split: field name -> its files (one, or two for text)."""

    start: int
    stop: int
    files: dict[str, list[ShardFile]]


@attrs.frozen
class Manifest:
    """The parsed manifest.json: fields, split name -> shards, the source dataset config and info."""

    fields: dict[str, FieldSpec]
    splits: dict[str, list[Shard]]
    source: ConfigDict
    info: ConfigDict

    def count(self, split: str) -> int:
        """Examples of ``split``."""
        shards = self.splits[split]
        return shards[-1].stop if shards else 0

    def to_dict(self) -> ConfigDict:
        splits: ConfigDict = {
            name: {"count": self.count(name),
                   "shards": [{"start": s.start, "stop": s.stop,
                               "files": {f: [attrs.asdict(x) for x in xs] for f, xs in s.files.items()}}
                              for s in shards]}
            for name, shards in self.splits.items()}
        return {"format": FORMAT, "version": VERSION, "examples": sum(self.count(n) for n in self.splits),
                "split_names": list(self.splits), "fields": {k: v.to_dict() for k, v in self.fields.items()},
                "splits": splits, "source": self.source, "info": self.info}


def _need(d: object, key: str, kind: type[T], where: str) -> T:
    """``d[key]`` when ``d`` is a table holding a value of ``kind`` there, else a ModalityDataError naming it."""
    value = d.get(key) if isinstance(d, Mapping) else None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ModalityDataError(f"{where}: key {key!r} must be a {kind.__name__}, got {value!r:.80}; the manifest is "
                                "damaged (re-pack the dataset with `mtd data pack`)")
    return value


def _field(d: object, where: str) -> FieldSpec:
    kind = _need(d, "kind", str, where)
    if kind == "text":
        return FieldSpec(kind="text")
    if kind != "tensor":
        raise ModalityDataError(f"{where}: key 'kind' must be 'tensor' or 'text', got {kind!r}")
    dtype, stored = _need(d, "dtype", str, where), _need(d, "stored", str, where)
    shape = _need(d, "shape", list, where)
    scale = None if isinstance(d, Mapping) and d.get("scale") is None else _need(d, "scale", int, where)
    if dtype not in TORCH_DTYPES or stored not in TORCH_DTYPES:
        raise ModalityDataError(f"{where}: dtype {dtype!r} / stored {stored!r}: expected one of {sorted(TORCH_DTYPES)}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ModalityDataError(f"{where}: key 'shape' must be a list of sizes >= 0, got {shape!r}")
    if scale is not None and not (1 <= scale <= 255 and stored == "uint8" and dtype == "float32"):
        raise ModalityDataError(f"{where}: key 'scale' {scale!r} needs stored uint8, dtype float32, 1..255")
    low, high = (_number(d, k, where) for k in ("min", "max"))
    finite = _need(d, "finite", bool, where) if isinstance(d, Mapping) and "finite" in d else True
    return FieldSpec(kind="tensor", dtype=dtype, shape=tuple(shape), stored=stored, scale=scale, low=low, high=high,
                     finite=finite)


def _number(d: object, key: str, where: str) -> float | None:
    value = d.get(key) if isinstance(d, Mapping) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModalityDataError(f"{where}: key {key!r} must be a number or null, got {value!r:.80}")
    return value


def _files(table: object, name: str, spec: FieldSpec, at: str) -> list[ShardFile]:
    entries = _need(table, name, list, at)
    if len(entries) != len(spec.suffixes):
        raise ModalityDataError(f"{at}: field {name!r} needs {len(spec.suffixes)} file(s), the manifest lists "
                                f"{len(entries)}")
    return [ShardFile(path=_need(e, "path", str, at), bytes=_need(e, "bytes", int, at),
                      sha256=_need(e, "sha256", str, at)) for e in entries]


def _shards(d: object, fields: Mapping[str, FieldSpec], where: str) -> list[Shard]:
    count = _need(d, "count", int, where)
    out: list[Shard] = []
    for k, s in enumerate(_need(d, "shards", list, where)):
        at = f"{where}, shard {k}"
        start, stop = _need(s, "start", int, at), _need(s, "stop", int, at)
        if start != (out[-1].stop if out else 0) or not start < stop:
            raise ModalityDataError(f"{at}: examples {start}..{stop} do not follow the previous shard's")
        table = _need(s, "files", dict, at)
        out.append(Shard(start=start, stop=stop,
                         files={name: _files(table, name, spec, at) for name, spec in fields.items()}))
    if (out[-1].stop if out else 0) != count:
        raise ModalityDataError(f"{where}: key 'count' is {count}, but the shards hold {out[-1].stop if out else 0}")
    return out


def read_manifest(root: Path) -> Manifest:
    """The manifest of the packed dataset folder ``root``, its structure checked (ModalityDataError naming it)."""
    path = root / MANIFEST
    if not root.is_dir():
        raise ModalityDataError(f"{root}: no such folder; dataset.path must name a folder written by `mtd data pack`")
    if not path.is_file():
        raise ModalityDataError(f"{path}: not found; {root} is not a packed dataset, or its packing did not finish "
                                "(the manifest is written last): pack it again with `mtd data pack CONFIG OUT`")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModalityDataError(f"{path}: cannot be read as JSON ({e})") from None
    where = str(path)
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ModalityDataError(f"{path}: not an mtd packed-dataset manifest (expected format {FORMAT!r})")
    if d.get("version") != VERSION:
        raise ModalityDataError(f"{path}: format version {d.get('version')!r}; this mtd reads version {VERSION}")
    fields = {str(k): _field(v, f"{where}, field {k!r}") for k, v in _need(d, "fields", dict, where).items()}
    if not fields:
        raise ModalityDataError(f"{where}: key 'fields' is empty; a dataset needs at least one field")
    splits = {str(k): _shards(v, fields, f"{where}, split {k!r}") for k, v in _need(d, "splits", dict, where).items()}
    return Manifest(fields=fields, splits=splits, source=dict(_need(d, "source", dict, where)),
                    info=dict(_need(d, "info", dict, where)))


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """The shape, dtype and Fortran order a .npy file's header declares, and where its data starts (a
    ModalityDataError when it has no such header)."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            offset = fh.tell()
    except (OSError, ValueError, SyntaxError) as e:
        raise ModalityDataError(f"{path}: not a readable .npy file ({e})") from None
    return tuple(shape), dtype, bool(fortran), offset


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file (hex), read in 1 MiB pieces."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
