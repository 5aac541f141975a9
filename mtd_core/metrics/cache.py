"""A small on-disk cache of tensors (safetensors) with JSON metadata, keyed by content hashes.

Used for trained feature networks and reference feature statistics, so that an evaluation re-run on the same
data reuses them instead of retraining. Layout: ``<root>/<kind>/<key>.safetensors`` beside ``<key>.json``.
Both files are written atomically (a temporary file in the same folder, then ``os.replace``), the tensors
first and the JSON last, so the JSON marks a complete entry; it records the SHA-256 of the tensor file, which
is checked on every read. Nothing is ever pickled. A corrupt entry gives a :class:`CacheWarning` and is
treated as missing (the caller recomputes and overwrites it).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import attrs
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from mtd_core.metrics.errors import CacheWarning
from mtd_core.types import ConfigDict, ConfigMapping

CACHE_ENV = "MTD_CACHE_DIR"
FORMAT = 1


def default_cache_root() -> Path:
    """``$MTD_CACHE_DIR`` when set, else ``~/.cache/mtd``; features and statistics live in sub-folders."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mtd"


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 (hex) of the tensors' dtypes, shapes and bytes: equal iff the data are bit-for-bit equal."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        # view as bytes: works for every dtype, including those numpy lacks (bfloat16)
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def json_digest(obj: object) -> str:
    """SHA-256 (hex) of ``obj`` as canonical JSON (sorted keys): for hashing recipes and configs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@attrs.frozen
class CacheEntry:
    """One cache entry read back: its tensors and the metadata saved with them."""

    tensors: dict[str, torch.Tensor]
    meta: ConfigDict


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class TensorCache:
    """Tensors plus JSON metadata under ``root/kind``, one entry per key.

    Args:
        kind: the sub-folder ("features", "stats"): what is cached, so keys of different kinds never meet.
        root: the cache root (default: :func:`default_cache_root`).
    """

    def __init__(self, kind: str, root: str | os.PathLike[str] | None = None) -> None:
        self.kind = kind
        self.dir = (Path(root).expanduser() if root is not None else default_cache_root()) / kind

    def paths(self, key: str) -> tuple[Path, Path]:
        """The (tensor file, JSON file) of ``key``."""
        return self.dir / f"{key}.safetensors", self.dir / f"{key}.json"

    def load(self, key: str) -> CacheEntry | None:
        """The entry for ``key``; None when absent, or (with a CacheWarning) when corrupt or unreadable."""
        st_path, meta_path = self.paths(key)
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError(f"unexpected metadata (format {meta.get('format') if isinstance(meta, dict) else None!r},"
                                 f" expected {FORMAT})")
            data = st_path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if digest != meta.get("sha256"):
                raise ValueError(f"{st_path.name} has SHA-256 {digest[:12]}..., the metadata records "
                                 f"{str(meta.get('sha256'))[:12]}...")
            tensors = st_load(data)
        except Exception as e:  # any unreadable entry is recomputed, never trusted
            warnings.warn(
                f"corrupt {self.kind} cache entry {key[:16]} in {self.dir}:\n  {type(e).__name__}: {e}\n"
                f"  it is ignored, recomputed and overwritten",
                CacheWarning, stacklevel=3,
            )
            return None
        return CacheEntry(tensors=dict(tensors), meta=meta)

    def save(self, key: str, tensors: Mapping[str, torch.Tensor], meta: ConfigMapping) -> None:
        """Write the entry for ``key`` atomically (tensors first, then the JSON that marks it complete)."""
        st_path, meta_path = self.paths(key)
        data = st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
        _atomic_write(st_path, data)
        full = {**meta, "format": FORMAT, "sha256": hashlib.sha256(data).hexdigest()}
        _atomic_write(meta_path, json.dumps(full, indent=2, sort_keys=True).encode())
