"""One split of a packed dataset: the rows a batch needs, read from its .npy shards with positioned reads.

The shards are plain .npy arrays (``np.load(path, mmap_mode="r")`` maps any of them), but the trainer reads rows
with ``pread`` into the batch's buffer rather than through a memory map: the same random access with no decode and
one copy out of the page cache, while the process's resident set stays flat however much of the data it reads. A
memory map keeps every page it touched mapped, and on a file system with large folios (ext4 on Linux 6.x) one touched
row maps about 2 MB around it (measured: 10 random 784-byte rows mapped 19 MB), so a run's resident set would grow
to the size of the shards. Runs of consecutive rows are read with one call.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Sequence
from io import BufferedReader
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mtd_core.data.packed_format import TORCH_DTYPES, FieldSpec, Manifest, npy_header
from mtd_core.data.splits import Field, images_to_unit_range
from mtd_core.errors import ModalityDataError
from mtd_core.modality import Modality

if TYPE_CHECKING:
    from mtd_core.taskset import TaskSet

Stored = dict[str, np.ndarray | list[str]]


@functools.cache
def _unit_table(scale: int) -> np.ndarray:
    """The float32 value ``images_to_unit_range(q, scale)`` of every uint8 q (what a stored pixel reads as)."""
    return images_to_unit_range(torch.arange(256), scale).numpy()


def _pread(fh: BufferedReader, buf: np.ndarray, offset: int) -> int:
    """Fill ``buf`` from ``fh`` at byte ``offset``; the bytes read."""
    view = memoryview(buf).cast("B")  # type: ignore[arg-type]
    if hasattr(os, "preadv"):
        return os.preadv(fh.fileno(), [view], offset)
    fh.seek(offset)
    return fh.readinto(view) or 0


class PackedExamples:
    """One split of a packed dataset: a map-style dataset whose batches are read from its shards.

    Picklable without its open files (each loader worker opens its own). ``loader_workers`` and
    ``loader_prefetch`` tell the trainer's loader (mtd_core/data/loader.py) how to read it.
    """

    def __init__(self, root: Path, manifest: Manifest, split: str, workers: int = 2, prefetch: int = 4) -> None:
        self.root, self.split = root, split
        self.specs = dict(manifest.fields)
        self.shards = list(manifest.splits[split])
        self._starts = np.array([s.start for s in self.shards], dtype=np.int64)
        self.size = manifest.count(split)
        self.source = f"{root} (split {split!r})"
        self.loader_workers, self.loader_prefetch = workers, prefetch
        self._files: dict[tuple[int, str, int], tuple[BufferedReader, int]] = {}

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_files": {}}

    def __len__(self) -> int:
        return self.size

    def where(self, index: int) -> str:
        """The split and the example, as error messages name it."""
        return f"{self.source}, example {index}"

    def _path(self, k: int, name: str, i: int) -> Path:
        return self.root / self.shards[k].files[name][i].path

    def _file(self, k: int, name: str, i: int) -> tuple[BufferedReader, int]:
        """File ``i`` of field ``name`` in shard ``k``, open, and where its data starts."""
        if (k, name, i) not in self._files:
            path = self._path(k, name, i)
            try:
                self._files[k, name, i] = (open(path, "rb"), npy_header(path)[3])  # noqa: SIM115 - kept open
            except OSError as e:
                raise ModalityDataError(f"{path} (split {self.split!r}, field {name!r}): cannot be read ({e})") from None
        return self._files[k, name, i]

    def _rows(self, k: int, name: str, i: int, rows: np.ndarray, out: np.ndarray) -> None:
        """Rows ``rows`` (shard-local, any order, repeats allowed) of file ``i`` of ``name`` into ``out``."""
        fh, start = self._file(k, name, i)
        row = out.itemsize * int(np.prod(out.shape[1:]))
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        tmp = np.empty_like(out)
        cuts = [0, *(np.nonzero(np.diff(srt) != 1)[0] + 1).tolist(), len(srt)]
        for a, b in itertools.pairwise(cuts):
            if _pread(fh, tmp[a:b], start + int(srt[a]) * row) != (b - a) * row:
                raise ModalityDataError(f"{self._path(k, name, i)} (split {self.split!r}, field {name!r}): ended "
                                        "before the rows the manifest lists (truncated since it was opened)")
        out[order] = tmp

    def get_batch(self, indices: torch.Tensor | Sequence[int]) -> dict[str, Field]:
        """The examples at ``indices``, stacked: field -> (B, ...) tensor, or a list of str for text."""
        return self.decode(self.read(indices))

    def read(self, indices: torch.Tensor | Sequence[int]) -> Stored:
        """The examples at ``indices`` as stored (uint8 pixels, narrow integers; text decoded): what a loader worker
        sends back, a quarter of the bytes of float32 images; :meth:`decode` turns it into the batch."""
        idx = torch.as_tensor(indices, dtype=torch.long).numpy()
        if idx.size and (idx.min() < 0 or idx.max() >= self.size):
            raise IndexError(f"{self.source}: index out of range 0..{self.size - 1}")
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        groups = [(int(k), np.nonzero(shard_of == k)[0]) for k in np.unique(shard_of)]
        out: Stored = {}
        for name, spec in self.specs.items():
            if spec.kind == "text":
                out[name] = self._texts(name, idx, groups)
                continue
            buf = np.empty((len(idx), *spec.shape), dtype=spec.stored)
            for k, pos in groups:
                part = np.empty((len(pos), *spec.shape), dtype=spec.stored)
                self._rows(k, name, 0, idx[pos] - self.shards[k].start, part)
                buf[pos] = part
            out[name] = buf
        return out

    def _texts(self, name: str, idx: np.ndarray, groups: list[tuple[int, np.ndarray]]) -> list[str]:
        texts: list[str] = [""] * len(idx)
        for k, pos in groups:
            local = idx[pos] - self.shards[k].start
            bounds = np.empty(2 * len(pos), dtype=np.int64)
            self._rows(k, name, 0, np.concatenate([local, local + 1]), bounds)
            fh, start = self._file(k, name, 1)
            for p, lo, hi in zip(pos.tolist(), bounds[:len(pos)].tolist(), bounds[len(pos):].tolist()):
                raw = np.empty(hi - lo, dtype=np.uint8)
                try:
                    if _pread(fh, raw, start + lo) != hi - lo:
                        raise UnicodeDecodeError("utf-8", b"", 0, 1, "the file ends before the text")
                    texts[p] = raw.tobytes().decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ModalityDataError(f"{self._path(k, name, 1)} (split {self.split!r}, field {name!r}): "
                                            f"example {int(idx[p])} is not UTF-8 text ({e.reason})") from None
        return texts

    def decode(self, stored: Stored) -> dict[str, Field]:
        """A batch from :meth:`read`'s arrays: each field in its dtype (images through their scale)."""
        out: dict[str, Field] = {}
        for name, value in stored.items():
            spec = self.specs[name]
            if isinstance(value, list):
                out[name] = value
            elif spec.scale is not None:  # a table of the 256 values: the same floats, without torch's threads
                out[name] = torch.from_numpy(_unit_table(spec.scale)[value])
            else:
                out[name] = torch.from_numpy(value if spec.stored == spec.dtype else value.astype(spec.dtype))
        return out

    def check_taskset(self, taskset: TaskSet) -> None:
        """Raise a ModalityDataError naming the field's first shard file when a field named like a modality of
        ``taskset`` disagrees with its DataSpec: shape, dtype, or (from the manifest's ranges) values outside its
        bounds or not finite. Reads no data."""
        for name, m in taskset.modalities.items():
            spec = self.specs.get(name)
            if spec is None:
                continue  # derived (a mask, a caption's tokens) or missing: the first batch says so
            ds = m.data_spec()
            who = f"{self._path(0, name, 0)} (split {self.split!r}, field {name!r}): modality {name!r} (kind {m.kind!r})"
            if spec.kind == "text":
                if type(m).derive is Modality.derive:
                    raise ModalityDataError(f"{who} expects {ds.dtype} numbers, but the packed field holds text")
                continue
            if spec.shape != tuple(ds.shape) or TORCH_DTYPES[spec.dtype] != ds.torch_dtype:
                raise ModalityDataError(f"{who} expects examples of shape {tuple(ds.shape)} and dtype {ds.dtype}, the "
                                        f"packed field has {spec.shape} and {spec.dtype}; change the modality's "
                                        "options to match the data, or pack data that matches them")
            _check_range(who, spec, ds.low, ds.high)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if not 0 <= index < self.size:
            raise IndexError(f"{self.source}: index {index} out of range 0..{self.size - 1}")
        return {k: v[0] for k, v in self.get_batch([index]).items()}


def _check_range(who: str, spec: FieldSpec, low: float | None, high: float | None) -> None:
    if not spec.finite and spec.dtype.startswith("float"):
        raise ModalityDataError(f"{who}: the packed field contains NaN or infinity")
    below = low is not None and spec.low is not None and spec.low < low
    if below or (high is not None and spec.high is not None and spec.high > high):
        raise ModalityDataError(f"{who} has values in [{spec.low:.6g}, {spec.high:.6g}], outside the allowed range "
                                f"[{low}, {high}]")
