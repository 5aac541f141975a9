"""Reading one checkpoint folder safely: its manifest (every file with its size and SHA-256), each file verified
against it, never through a symbolic link, and the bytes parsed as JSON or safetensors (nothing is unpickled).

The writer is mtd_core/training/checkpoint.py; this module only reads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from mtd_core.errors import CheckpointError
from mtd_core.types import ConfigDict, ConfigMapping, ConfigValue

FORMAT = "mtd-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
REQUIRED = ("model.safetensors", "state.json", "config.json")


def refuse_links(ckpt_dir: Path, rel: str = "") -> None:
    """Raise CheckpointError when the checkpoint folder, or any folder or file on the way to ``rel`` inside it, is a
    symbolic link: a checkpoint is plain files and folders, so a link (to a system file, another run) is refused
    by name instead of followed."""
    path = ckpt_dir
    for part in [""] + [p for p in rel.split("/") if p]:
        path = path / part if part else path
        if path.is_symlink():
            raise CheckpointError(f"{path}: is a symbolic link (to {os.readlink(path)}); a checkpoint holds only plain "
                                  "files and folders, and nothing outside its folder is read")


def read_file(path: Path) -> bytes:
    """The bytes of ``path``, opened without following a symbolic link (O_NOFOLLOW where the system has it)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as e:
        if path.is_symlink():
            raise CheckpointError(f"{path}: is a symbolic link; a checkpoint holds only plain files") from None
        raise CheckpointError(f"{path}: cannot read: {e}") from None
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def read_verified(ckpt_dir: Path, rel: str, entry: ConfigMapping) -> bytes:
    """The bytes of ``ckpt_dir/rel``, checked against its manifest ``entry`` (size, then SHA-256)."""
    path = ckpt_dir / rel
    refuse_links(ckpt_dir, rel)
    try:
        data = read_file(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (listed in {ckpt_dir / MANIFEST})") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, the manifest lists a file") from None
    if len(data) != entry.get("bytes"):
        raise CheckpointError(f"{path}: truncated or altered: {len(data)} bytes, the manifest says {entry.get('bytes')}")
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise CheckpointError(f"{path}: corrupt: its SHA-256 does not match the manifest")
    return data


def check_entry(mpath: Path, rel: object, entry: object) -> None:
    """A manifest entry must name a file inside the checkpoint folder and give its size and SHA-256."""
    parts = rel.split("/") if isinstance(rel, str) else []
    if not parts or any(not SAFE_NAME.match(p) or p in (".", "..") for p in parts):
        raise CheckpointError(f"{mpath}: the entry {rel!r} is not a plain relative path inside the checkpoint "
                              "folder (letters, digits, '_', '.', '-' and '/' only, no '..'); nothing was read")
    if not (isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)):
        raise CheckpointError(f"{mpath}: the entry {rel!r} must be a table with an integer 'bytes' and a string "
                              f"'sha256', got {entry!r:.80}")


def parse_json(ckpt_dir: Path, rel: str, data: bytes) -> ConfigValue:
    """``data`` (the file ``rel``) as JSON; a CheckpointError naming the file otherwise."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{ckpt_dir / rel}: not valid JSON: {e}") from None


def parse_tensors(ckpt_dir: Path, rel: str, data: bytes, finite: bool = False) -> dict[str, torch.Tensor]:
    """``data`` (the file ``rel``) as safetensors; with ``finite``, every floating-point tensor must hold finite
    values only (NaN or infinite weights are refused by the tensor's name, not evaluated into "nan bits/dim")."""
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt_dir / rel}: not a valid safetensors file: {e}") from None
    if finite:
        for name, t in tensors.items():
            if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise CheckpointError(f"{ckpt_dir / rel}: tensor {name!r} holds {bad} non-finite value(s) (NaN or "
                                      "infinity) of " f"{t.numel()}; expected finite weights (the run diverged or "
                                      "the file was altered)")
    return tensors


def read_manifest(mpath: Path) -> tuple[dict[str, ConfigDict], int | None]:
    """The manifest's file table and its step (None when it names none), after checking the manifest's format,
    version and every entry; the manifest itself is never read through a symbolic link."""
    refuse_links(mpath.parent, mpath.name)
    try:
        manifest = json.loads(read_file(mpath).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{mpath}: unreadable manifest: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{mpath}: not an mtd checkpoint manifest")
    version = manifest.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{mpath}: 'version' must be an integer, got {version!r}")
    if version > VERSION:
        raise CheckpointError(f"{mpath}: checkpoint format version {version} is newer than this mtd "
                              f"supports ({VERSION}); upgrade mtd")
    step = manifest.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise CheckpointError(f"{mpath}: 'step' must be a non-negative integer, got {step!r}")
    files: dict[str, ConfigDict] = manifest["files"]
    for rel, entry in files.items():
        check_entry(mpath, rel, entry)
    for required in REQUIRED:
        if required not in files:
            raise CheckpointError(f"{mpath}: lists no {required}")
    return files, step


def is_finite_number(value: object) -> bool:
    """An int or float (not a bool) that is finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
