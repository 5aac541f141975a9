"""Safe checkpoints: tensors in safetensors, everything else in JSON, written atomically, verified on load.

A checkpoint is a folder ``step_00001234/`` under a run's ``checkpoints/`` folder:

    model.safetensors       the model's state dict
    ema.safetensors         the EMA weights (optional)
    optimizer.safetensors   the optimizer's tensors ("state.<param index>.<name>"); the rest is in state.json
    rng.safetensors         torch CPU and CUDA generator states
    state.json              step, trainer state (data sampler position, EMA update count, ...), the optimizer's
                            non-tensor state and param groups, python ``random`` and numpy RNG states
    config.json             the resolved configuration (model config, run config)
    assets/<modality>/<name> modality assets (e.g. a text tokenizer model)
    manifest.json           every file above with its size and SHA-256; written last, itself atomically

Nothing is pickled and nothing is unpickled: loading uses ``safetensors`` and ``json`` only. A checkpoint is
written into a temporary folder beside its final place, every file is fsync'ed, and the folder is renamed into
place with ``os.replace``; a crash at any point leaves either the complete new checkpoint or none (earlier
checkpoints are untouched). Replacing a checkpoint of the same step moves the old one aside first; a crash
between the two renames leaves both complete folders beside the missing name, and :func:`recover_checkpoints`
(run before every save and by ``--resume``) puts the newest back instead of deleting it, if its manifest reads.
Loading checks the manifest, so a truncated or altered file is a CheckpointError naming the file, and a manifest
entry that points outside the checkpoint folder is refused before anything is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from mtd_core.errors import CheckpointError
from mtd_core.training.state import StateDict, optimizer_from_parts, optimizer_to_parts
from mtd_core.types import ConfigDict, ConfigMapping, ConfigValue

FORMAT = "mtd-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_LEFTOVER = re.compile(r"^\.tmp-(old-|del-)?(step_\d+)-[0-9a-f]{8}$")


@attrs.define
class Checkpoint:
    """Everything needed to rebuild a model and continue its training run.

    Args:
        step: the number of optimisation steps taken.
        model: the model's state dict.
        config: the resolved configuration (``{"model": model.config(), "run": ..., ...}``), JSON-representable.
        ema: the EMA weights, or None.
        optimizer: the optimizer's ``state_dict()``, or None.
        rng: the RNG states from :func:`capture_rng_state`, or None.
        trainer: JSON-representable trainer state (data sampler position, EMA update count, elapsed time, ...).
        assets: modality name -> asset name -> bytes (e.g. a tokenizer).
        path: where it was saved or loaded from (set by :func:`save_checkpoint` / :func:`load_checkpoint`).
    """

    step: int
    model: dict[str, torch.Tensor]
    config: ConfigDict = attrs.field(factory=dict)
    ema: dict[str, torch.Tensor] | None = None
    optimizer: StateDict | None = None
    rng: StateDict | None = None
    trainer: ConfigDict = attrs.field(factory=dict)
    assets: dict[str, dict[str, bytes]] = attrs.field(factory=dict)
    path: Path | None = None


# -- file helpers ----------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync one file (inside a temporary checkpoint folder)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Replace ``path`` atomically: write a temporary file in the same folder, fsync, ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        _write_file(tmp, data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True, allow_nan=True).encode("utf-8")


def _tensors_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    # clone: safetensors refuses tensors that share storage; contiguous CPU copies are always accepted
    return st_save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})


# -- listing -----------------------------------------------------------------------------------------
def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint folder name ``step_<n>``, else None."""
    m = _STEP_DIR.match(path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints (folders ``step_<n>`` with a manifest) under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def find_checkpoint(path: str | Path) -> Path:
    """Resolve ``path`` to one checkpoint folder: itself, the latest under it, or the latest under ``path/checkpoints``."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or checkpoint")
    for root in (path / "checkpoints", path):
        found = list_checkpoints(root)
        if found:
            return found[-1]
    if checkpoint_step(path) is not None:
        raise CheckpointError(f"{path}: incomplete checkpoint (no {MANIFEST}; the write was interrupted)")
    raise CheckpointError(f"{path}: holds no complete checkpoint (expected folders checkpoints/step_<n> with a "
                          f"{MANIFEST})")


# -- saving ----------------------------------------------------------------------------------------
def _complete(path: Path) -> bool:
    """Whether a leftover folder holds a manifest that reads as one (its files are checked when it is loaded)."""
    try:
        _read_manifest(path / MANIFEST)
    except (CheckpointError, OSError):
        return False
    return True


def recover_checkpoints(root: str | Path) -> list[Path]:
    """Tidy what a crash during a save left in ``root``; returns the checkpoints it put back.

    A leftover folder ``.tmp-step_<n>-*`` (a new checkpoint being written) or ``.tmp-old-step_<n>-*`` (an old one
    moved aside while a checkpoint of the same step replaced it) that is complete (it has its manifest) and whose
    ``step_<n>`` is missing is renamed back into place, the new one before the old; every other leftover, and
    ``.tmp-del-*`` (a deletion of keep_last in progress), is removed.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    restored = []
    leftovers = sorted((p for p in root.iterdir() if p.is_dir() and _LEFTOVER.match(p.name)),
                       key=lambda p: (_LEFTOVER.match(p.name).group(1) or "", p.name))  # type: ignore[union-attr]
    for path in leftovers:
        kind, name = _LEFTOVER.match(path.name).groups()  # type: ignore[union-attr]
        final = root / name
        if kind != "del-" and _complete(path) and not final.exists():
            os.replace(path, final)
            restored.append(final)
        else:
            shutil.rmtree(path, ignore_errors=True)
    for stale in root.glob(".tmp-*"):  # anything else temporary (never a complete checkpoint)
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    if restored:
        _fsync_dir(root)
    return restored


def save_checkpoint(root: str | Path, ckpt: Checkpoint, keep_last: int = 0) -> Path:
    """Write ``ckpt`` atomically as ``root/step_<step>`` and keep only the newest ``keep_last`` (0: keep all).

    A checkpoint of the same step that already exists is replaced (never lost: see :func:`recover_checkpoints`).
    Returns the checkpoint's folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    recover_checkpoints(root)
    final = root / f"step_{ckpt.step:08d}"
    tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        _write_checkpoint(root, final, tmp, ckpt)
    except OSError as e:  # a full disk, a read-only folder: a named error, not a traceback
        raise CheckpointError(f"{root}: cannot write the checkpoint of step {ckpt.step} ({e}); earlier checkpoints "
                              "are untouched") from None
    if keep_last > 0:
        for old in list_checkpoints(root)[:-keep_last]:
            doomed = root / f".tmp-del-{old.name}-{uuid.uuid4().hex[:8]}"
            os.replace(old, doomed)  # out of the listing first, so a crash mid-delete leaves no half checkpoint
            shutil.rmtree(doomed, ignore_errors=True)
    ckpt.path = final
    return final


def _write_checkpoint(root: Path, final: Path, tmp: Path, ckpt: Checkpoint) -> None:
    """Every file into ``tmp``, fsync'ed, manifest last; then ``tmp`` renamed to ``final`` (module docstring)."""
    tmp.mkdir()
    try:
        files: dict[str, bytes] = {"model.safetensors": _tensors_bytes(ckpt.model)}
        if ckpt.ema is not None:
            files["ema.safetensors"] = _tensors_bytes(ckpt.ema)
        state: ConfigDict = {"format": FORMAT, "version": VERSION, "step": ckpt.step, "trainer": ckpt.trainer}
        if ckpt.optimizer is not None:
            opt_tensors, state["optimizer"] = optimizer_to_parts(ckpt.optimizer)
            files["optimizer.safetensors"] = _tensors_bytes(opt_tensors)
        if ckpt.rng is not None:
            files["rng.safetensors"] = _tensors_bytes(ckpt.rng["tensors"])
            state["rng"] = {"python": ckpt.rng.get("python"), "numpy": ckpt.rng.get("numpy")}
        files["state.json"] = _json_bytes(state)
        files["config.json"] = _json_bytes(ckpt.config)
        for modality, items in ckpt.assets.items():
            for name, data in items.items():
                if not (_SAFE_NAME.match(modality) and _SAFE_NAME.match(name)):
                    raise CheckpointError(f"asset {modality}/{name}: names may hold only letters, digits, '_', '.', '-'")
                files[f"assets/{modality}/{name}"] = bytes(data)
        entries: dict[str, dict[str, int | str]] = {}
        manifest = {"format": FORMAT, "version": VERSION, "step": ckpt.step, "files": entries}
        for rel, data in files.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_file(target, data)
            entries[rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for sub in {(tmp / rel).parent for rel in files}:
            _fsync_dir(sub)
        write_atomic(tmp / MANIFEST, _json_bytes(manifest))  # a kill mid-write never leaves a half manifest
        if final.exists():  # same step saved twice (e.g. a signal right after a periodic save): replace it
            old = root / f".tmp-old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    finally:
        # A complete tmp without a final checkpoint may be the only copy (a crash between the renames of a
        # replacement): recover_checkpoints puts it back. An incomplete one, or one beside the final, is garbage.
        if tmp.exists() and (final.exists() or not (tmp / MANIFEST).is_file()):
            shutil.rmtree(tmp, ignore_errors=True)


# -- loading ---------------------------------------------------------------------------------------
def _read_verified(ckpt_dir: Path, rel: str, entry: ConfigMapping) -> bytes:
    path = ckpt_dir / rel
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (listed in {ckpt_dir / MANIFEST})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e}") from None
    if len(data) != entry.get("bytes"):
        raise CheckpointError(f"{path}: truncated or altered: {len(data)} bytes, the manifest says {entry.get('bytes')}")
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise CheckpointError(f"{path}: corrupt: its SHA-256 does not match the manifest")
    return data


def _check_entry(mpath: Path, rel: object, entry: object) -> None:
    """A manifest entry must name a file inside the checkpoint folder and give its size and SHA-256."""
    parts = rel.split("/") if isinstance(rel, str) else []
    if not parts or any(not _SAFE_NAME.match(p) or p in (".", "..") for p in parts):
        raise CheckpointError(f"{mpath}: the entry {rel!r} is not a plain relative path inside the checkpoint "
                              "folder (letters, digits, '_', '.', '-' and '/' only, no '..'); nothing was read")
    if not (isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)):
        raise CheckpointError(f"{mpath}: the entry {rel!r} must be a table with an integer 'bytes' and a string "
                              f"'sha256', got {entry!r:.80}")


def _json(ckpt_dir: Path, rel: str, data: bytes) -> ConfigValue:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{ckpt_dir / rel}: not valid JSON: {e}") from None


def _tensors(ckpt_dir: Path, rel: str, data: bytes) -> dict[str, torch.Tensor]:
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt_dir / rel}: not a valid safetensors file: {e}") from None


def _read_manifest(mpath: Path) -> dict[str, ConfigDict]:
    """The manifest's file table, after checking the manifest's format, version and every entry."""
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
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
    files: dict[str, ConfigDict] = manifest["files"]
    for rel, entry in files.items():
        _check_entry(mpath, rel, entry)
    for required in ("model.safetensors", "state.json", "config.json"):
        if required not in files:
            raise CheckpointError(f"{mpath}: lists no {required}")
    return files


def load_checkpoint(path: str | Path, parts: Iterable[str] = ("model", "ema", "optimizer", "rng", "assets")) -> Checkpoint:
    """Read and verify a checkpoint (``path``: a checkpoint folder, a run folder, or a checkpoints folder).

    Args:
        path: where to look; a folder that is not itself a checkpoint resolves to its latest one.
        parts: which of "model", "ema", "optimizer", "rng", "assets" to read (config and state are always read).

    Raises:
        CheckpointError: nothing found, an incomplete write, a missing, truncated or corrupt file, or a file that
            is not what it should be. The message names the file.
    """
    ckpt_dir = find_checkpoint(path)
    parts = set(parts)
    mpath = ckpt_dir / MANIFEST
    files = _read_manifest(mpath)

    def read(rel: str) -> bytes | None:
        return _read_verified(ckpt_dir, rel, files[rel]) if rel in files else None

    state = _json(ckpt_dir, "state.json", read("state.json"))  # type: ignore[arg-type]
    config = _json(ckpt_dir, "config.json", read("config.json"))  # type: ignore[arg-type]
    for name, value in (("state.json", state), ("config.json", config)):
        if not isinstance(value, dict):
            raise CheckpointError(f"{ckpt_dir / name}: expected a JSON object, got {type(value).__name__}")
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{ckpt_dir / 'state.json'}: 'step' must be a non-negative integer, got {step!r}")
    trainer = state.get("trainer", {})
    if not isinstance(trainer, dict):
        raise CheckpointError(f"{ckpt_dir / 'state.json'}: 'trainer' must be a JSON object, got {trainer!r:.60}")
    ckpt = Checkpoint(step=step, model={}, config=config, trainer=trainer, path=ckpt_dir)
    if "model" in parts:
        ckpt.model = _tensors(ckpt_dir, "model.safetensors", read("model.safetensors"))  # type: ignore[arg-type]
    if "ema" in parts and "ema.safetensors" in files:
        ckpt.ema = _tensors(ckpt_dir, "ema.safetensors", read("ema.safetensors"))  # type: ignore[arg-type]
    if "optimizer" in parts and "optimizer.safetensors" in files:
        tensors = _tensors(ckpt_dir, "optimizer.safetensors", read("optimizer.safetensors"))  # type: ignore[arg-type]
        ckpt.optimizer = optimizer_from_parts(tensors, state["optimizer"])
    if "rng" in parts and "rng.safetensors" in files:
        tensors = _tensors(ckpt_dir, "rng.safetensors", read("rng.safetensors"))  # type: ignore[arg-type]
        ckpt.rng = {"tensors": tensors, **state.get("rng", {})}
    if "assets" in parts:
        for rel in files:
            if rel.startswith("assets/"):
                _, modality, name = rel.split("/", 2)
                ckpt.assets.setdefault(modality, {})[name] = read(rel)  # type: ignore[assignment]
    return ckpt
