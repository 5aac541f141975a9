"""Reading a packed dataset (``[dataset] name = "packed"``, ``path = OUT``; written by ``mtd data pack``).

Before anything is trained on, every shard file the manifest lists is checked: it exists, has the manifest's size,
its .npy header declares the shape and dtype the manifest's field says, a text field's offsets are consistent, and
(``verify = "checksums"``, the default) its SHA-256 is the manifest's. Each failure is a ModalityDataError naming
the file, the split and the field. Batches are then read straight from the shards: only the rows
of the examples asked for are read (packed_examples.py), so a dataset far larger than memory trains with a small,
flat resident set.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mtd_core.data.packed_examples import PackedExamples
from mtd_core.data.packed_format import (
    FieldSpec,
    Manifest,
    Shard,
    ShardFile,
    file_sha256,
    npy_header,
    read_manifest,
)
from mtd_core.data.splits import DatasetSplits
from mtd_core.errors import ConfigError, ModalityDataError

VERIFY = ("checksums", "sizes")
MAX_WORKERS = 64


READING_OPTIONS = ("verify", "workers", "prefetch")
"""The options that change how the data is read, not what it is."""


def _check_options(verify: object, workers: object, prefetch: object) -> None:
    if verify not in VERIFY:
        raise ConfigError(f"dataset.verify: expected one of {list(VERIFY)} ('checksums' hashes every shard before "
                          f"training, 'sizes' checks sizes and headers only), got {verify!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= MAX_WORKERS:
        raise ConfigError(f"dataset.workers: expected an integer in 0..{MAX_WORKERS} (loader worker processes; 0 "
                          f"reads in the training process), got {workers!r}")
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
        raise ConfigError(f"dataset.prefetch: expected a positive integer (batches each worker reads ahead), got "
                          f"{prefetch!r}")


def load_packed(path: str, verify: str = "checksums", workers: int = 2, prefetch: int = 4) -> DatasetSplits:
    """The packed dataset in folder ``path``, verified, as splits read from disk batch by batch.

    Args:
        path: the folder ``mtd data pack`` wrote (holding manifest.json).
        verify: "checksums" (sizes, headers and the SHA-256 of every shard, before training) or "sizes" (sizes and
            headers only: for very large data on trusted storage, where hashing it at every start takes too long).
        workers: loader worker processes reading batches ahead of the training step (0: in the training process).
        prefetch: batches each worker reads ahead.
    """
    _check_options(verify, workers, prefetch)
    root = Path(path).expanduser()
    manifest = read_manifest(root)
    for split in ("train", "test"):
        if split not in manifest.splits or not manifest.count(split):
            raise ModalityDataError(f"{root}/manifest.json: has no {split!r} split with examples (it has "
                                    f"{sorted(manifest.splits)}); pack the dataset again")
    verify_files(root, manifest, checksums=verify == "checksums")
    splits = {s: PackedExamples(root, manifest, s, workers=workers, prefetch=prefetch) for s in manifest.splits}
    info = {**manifest.info, "reading_options": list(READING_OPTIONS)}  # may change on --resume (resume.py)
    return DatasetSplits(train=splits["train"], test=splits["test"], info=info, val=splits.get("val"))


def _expected(spec: FieldSpec, i: int, n: int) -> tuple[tuple[int, ...] | None, np.dtype]:
    """The shape (None: any 1-D length) and dtype file ``i`` of an ``n``-example shard of ``spec`` must have."""
    if spec.kind == "text":
        return ((n + 1,), np.dtype(np.int64)) if i == 0 else (None, np.dtype(np.uint8))
    return (n, *spec.shape), np.dtype(spec.stored)


def _verify_file(root: Path, f: ShardFile, spec: FieldSpec, i: int, shard: Shard, what: str, checksums: bool) -> Path:
    p = root / f.path
    if os.path.isabs(f.path) or ".." in Path(f.path).parts:
        raise ModalityDataError(f"{root}/manifest.json ({what}): file {f.path!r} points outside the dataset folder")
    if not p.is_file():
        raise ModalityDataError(f"{p} ({what}): missing, but the manifest lists it; copy the whole folder again, or "
                                "pack the dataset again")
    size = p.stat().st_size
    if size != f.bytes:
        how = "truncated" if size < f.bytes else "larger than written"
        raise ModalityDataError(f"{p} ({what}): {size} bytes, the manifest says {f.bytes} ({how}); copy it again or "
                                "pack the dataset again")
    shape, dtype, fortran, _ = npy_header(p)
    want_shape, want_dtype = _expected(spec, i, shard.stop - shard.start)
    if dtype != want_dtype or fortran or len(shape) != (1 if want_shape is None else len(want_shape)) \
            or (want_shape is not None and shape != want_shape):
        raise ModalityDataError(f"{p} ({what}): holds an array of shape {shape} and dtype {dtype}, but the "
                                f"manifest's field needs shape {want_shape or '(any length,)'} and dtype {want_dtype}")
    if checksums and file_sha256(p) != f.sha256:
        raise ModalityDataError(f"{p} ({what}): its SHA-256 differs from the manifest's (the file is damaged or was "
                                "replaced); copy it again or pack the dataset again")
    return p


def verify_files(root: Path, manifest: Manifest, checksums: bool = True) -> None:
    """Check every shard file of ``manifest`` (see the module docstring); a ModalityDataError at the first fault."""
    for split, shards in manifest.splits.items():
        for shard in shards:
            for name, files in shard.files.items():
                spec = manifest.fields[name]
                what = f"split {split!r}, field {name!r}, examples {shard.start}..{shard.stop - 1}"
                paths = [_verify_file(root, f, spec, i, shard, what, checksums) for i, f in enumerate(files)]
                if spec.kind == "text":
                    offsets = np.load(paths[0], mmap_mode="r")  # (examples + 1) int64: small, read once
                    length = npy_header(paths[1])[0][0]
                    if offsets[0] != 0 or offsets[-1] != length or bool((np.diff(offsets) < 0).any()):
                        raise ModalityDataError(f"{paths[0]} ({what}): the offsets do not run from 0 up to the "
                                                f"{length} bytes of {paths[1].name}")
