"""Safe checkpoints: tensors in safetensors, everything else in JSON, written atomically, verified on load.

A checkpoint is a folder ``step_00001234/`` under a run's ``checkpoints/`` folder:

    model.safetensors       the model's state dict
    ema.safetensors         the (default) EMA's weights (optional)
    ema_<name>.safetensors  the weights of each further EMA, ``trainer.emas`` (optional; ema_bank.py)
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
Loading checks the manifest (mtd_core/training/manifest.py), so a truncated or altered file, a symbolic link, a
step that disagrees with the folder's name, a non-finite weight or a malformed state.json is a CheckpointError
naming the file, and a manifest entry that points outside the checkpoint folder is refused before anything is read.
A save holds an exclusive lock on the checkpoints folder (``flock`` on the folder itself), so that the tidying of
another process (``mtd sample`` on a run in training) never removes the temporary folder of a save in progress.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs
import torch
from safetensors.torch import save as st_save

from mtd_core.errors import CheckpointError
from mtd_core.training.checkpoint_schema import check_config, check_state
from mtd_core.training.ema_bank import ema_file, ema_name
from mtd_core.training.manifest import (
    FORMAT,
    MANIFEST,
    SAFE_NAME,
    VERSION,
    parse_json,
    parse_tensors,
    read_manifest,
    read_verified,
    refuse_links,
)
from mtd_core.training.recovery import (
    Recovery,
    fsync_dir,
    folder_lock,
    tidy_locked,
    checkpoint_step,
    checkpoints_root,
    recover_checkpoints,
    recover_run,
    tidy_checkpoints,
)
from mtd_core.training.state import StateDict, optimizer_from_parts, optimizer_to_parts
from mtd_core.types import ConfigDict

__all__ = ["FORMAT", "MANIFEST", "VERSION", "Checkpoint", "Recovery", "checkpoint_step", "checkpoints_root",
           "find_checkpoint", "list_checkpoints", "load_checkpoint", "recover_checkpoints", "recover_run",
           "save_checkpoint", "tidy_checkpoints", "write_atomic"]


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
        emas: the further EMAs' weights by name (``trainer.emas``; the default EMA is ``ema``).
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
    emas: dict[str, dict[str, torch.Tensor]] = attrs.field(factory=dict)
    path: Path | None = None


# -- file helpers ----------------------------------------------------------------------------------
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
    fsync_dir(path.parent)


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True, allow_nan=True).encode("utf-8")


def _tensors_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    # clone: safetensors refuses tensors that share storage; contiguous CPU copies are always accepted
    return st_save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})


# -- listing -----------------------------------------------------------------------------------------
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
def save_checkpoint(root: str | Path, ckpt: Checkpoint, keep_last: int = 0) -> Path:
    """Write ``ckpt`` atomically as ``root/step_<step>`` and keep only the newest ``keep_last`` (0: keep all).

    A checkpoint of the same step that already exists is replaced (never lost: see :func:`recover_checkpoints`).
    The folder is locked for the save. Returns the checkpoint's folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with folder_lock(root, wait=True):
        tidy_locked(root)
        final = root / f"step_{ckpt.step:08d}"
        tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        try:
            _write_checkpoint(root, final, tmp, ckpt)
        except OSError as e:  # a full disk, a read-only folder: a named error, not a traceback
            raise CheckpointError(f"{root}: cannot write the checkpoint of step {ckpt.step} ({e}); earlier "
                                  "checkpoints are untouched") from None
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
        for name, tensors in ckpt.emas.items():
            if ema_name(ema_file(name)) != name or not SAFE_NAME.match(name):
                raise CheckpointError(f"EMA {name!r}: a name of letters, digits, '_' and '-' only is expected")
            files[ema_file(name)] = _tensors_bytes(tensors)
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
                if not (SAFE_NAME.match(modality) and SAFE_NAME.match(name)):
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
            fsync_dir(sub)
        write_atomic(tmp / MANIFEST, _json_bytes(manifest))  # a kill mid-write never leaves a half manifest
        if final.exists():  # same step saved twice (e.g. a signal right after a periodic save): replace it
            old = root / f".tmp-old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
    finally:
        # A complete tmp without a final checkpoint may be the only copy (a crash between the renames of a
        # replacement): recover_checkpoints puts it back. An incomplete one, or one beside the final, is garbage.
        if tmp.exists() and (final.exists() or not (tmp / MANIFEST).is_file()):
            shutil.rmtree(tmp, ignore_errors=True)


# -- loading ---------------------------------------------------------------------------------------
def _check_steps(ckpt_dir: Path, state_step: object, manifest_step: int | None) -> int:
    """The step of state.json, which must agree with the manifest's and with the folder's name ``step_<n>``."""
    state_file = ckpt_dir / "state.json"
    if isinstance(state_step, bool) or not isinstance(state_step, int) or state_step < 0:
        raise CheckpointError(f"{state_file}: 'step' must be a non-negative integer, got {state_step!r}")
    named = checkpoint_step(ckpt_dir)
    if named is not None and named != state_step:
        raise CheckpointError(f"{ckpt_dir}: the folder is named for step {named} but its state.json says step "
                              f"{state_step}; a checkpoint must hold the step it is named for (a moved or edited "
                              "checkpoint), so it is not resumed or loaded")
    if manifest_step is not None and manifest_step != state_step:
        raise CheckpointError(f"{ckpt_dir}: its {MANIFEST} says step {manifest_step} but its state.json says step "
                              f"{state_step}")
    return state_step


def load_checkpoint(path: str | Path, parts: Iterable[str] = ("model", "ema", "optimizer", "rng", "assets")) -> Checkpoint:
    """Read and verify a checkpoint (``path``: a checkpoint folder, a run folder, or a checkpoints folder).

    Args:
        path: where to look; a folder that is not itself a checkpoint resolves to its latest one.
        parts: which of "model", "ema", "optimizer", "rng", "assets" to read (config and state are always read).

    Raises:
        CheckpointError: nothing found, an incomplete write, a missing, truncated or corrupt file, a symbolic link,
            a step that disagrees with the folder's name, a non-finite weight, a missing or wrongly typed key of
            state.json or config.json, or a file that is not what it should be. The message names the file.
    """
    ckpt_dir = find_checkpoint(path)
    parts = set(parts)
    refuse_links(ckpt_dir)
    files, manifest_step = read_manifest(ckpt_dir / MANIFEST)

    def read(rel: str) -> bytes:
        return read_verified(ckpt_dir, rel, files[rel])

    state, config = (parse_json(ckpt_dir, rel, read(rel)) for rel in ("state.json", "config.json"))
    for name, value in (("state.json", state), ("config.json", config)):
        if not isinstance(value, dict):
            raise CheckpointError(f"{ckpt_dir / name}: expected a JSON object, got {type(value).__name__}")
    assert isinstance(state, dict) and isinstance(config, dict)
    step = _check_steps(ckpt_dir, state.get("step"), manifest_step)
    check_state(ckpt_dir / "state.json", state, optimizer="optimizer.safetensors" in files,
                rng="rng.safetensors" in files)
    check_config(ckpt_dir / "config.json", config)
    ckpt = Checkpoint(step=step, model={}, config=config, trainer=state.get("trainer") or {}, path=ckpt_dir)
    if "model" in parts:
        ckpt.model = parse_tensors(ckpt_dir, "model.safetensors", read("model.safetensors"), finite=True)
    if "ema" in parts and "ema.safetensors" in files:
        ckpt.ema = parse_tensors(ckpt_dir, "ema.safetensors", read("ema.safetensors"), finite=True)
    if "ema" in parts:
        ckpt.emas = {other: parse_tensors(ckpt_dir, rel, read(rel), finite=True)
                     for rel in files if (other := ema_name(rel)) is not None}
    if "optimizer" in parts and "optimizer.safetensors" in files:
        tensors = parse_tensors(ckpt_dir, "optimizer.safetensors", read("optimizer.safetensors"), finite=True)
        ckpt.optimizer = optimizer_from_parts(tensors, state["optimizer"], ckpt_dir / "optimizer.safetensors")
    if "rng" in parts and "rng.safetensors" in files:
        tensors = parse_tensors(ckpt_dir, "rng.safetensors", read("rng.safetensors"))
        ckpt.rng = {"tensors": tensors, **state["rng"]}
    if "assets" in parts:
        for rel in files:
            if rel.startswith("assets/"):
                _, modality, name = (rel.split("/", 2) + ["", ""])[:3]
                if not name or "/" in name:
                    raise CheckpointError(f"{ckpt_dir / MANIFEST}: the entry {rel!r} is not assets/<modality>/<name>")
                ckpt.assets.setdefault(modality, {})[name] = read(rel)
    return ckpt
