"""Tidying what a killed save left in a checkpoints folder, the one routine every command runs when it opens a
run folder (:func:`recover_run`), and the lock a save holds so that no other process tidies it away meanwhile.

A save (mtd_core/training/checkpoint.py) writes ``.tmp-step_<n>-*`` and renames it to ``step_<n>``; replacing a
checkpoint of the same step moves the old one aside as ``.tmp-old-step_<n>-*`` first; keep_last renames a doomed
checkpoint to ``.tmp-del-step_<n>-*`` before deleting it. A kill at any moment leaves at most these.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs

from mtd_core.errors import CheckpointError
from mtd_core.training.manifest import MANIFEST, read_manifest

_STEP_DIR = re.compile(r"^step_(\d+)$")
_LEFTOVER = re.compile(r"^\.tmp-(old-|del-)?(step_\d+)-[0-9a-f]{8}$")


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint folder name ``step_<n>``, else None."""
    m = _STEP_DIR.match(path.name)
    return int(m.group(1)) if m else None


def fsync_dir(path: Path) -> None:
    """fsync a folder (its entries), where the system allows it."""
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


# -- recovery and the writer's lock ------------------------------------------------------------------
@contextlib.contextmanager
def folder_lock(root: Path, wait: bool) -> Iterator[bool]:
    """An exclusive ``flock`` on the folder ``root`` itself (no lock file), held by a save; yields whether it was
    taken (without ``wait``, False when another process holds it). The kernel releases it when its holder dies, so a
    killed save never leaves it taken. Where ``fcntl`` is missing (Windows) every call takes it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield True
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def _complete(path: Path) -> bool:
    """Whether a leftover folder holds a manifest that reads as one (its files are checked when it is loaded)."""
    try:
        read_manifest(path / MANIFEST)
    except (CheckpointError, OSError):
        return False
    return True


@attrs.frozen
class Recovery:
    """What tidying a checkpoints folder did: ``restored`` leftovers put back under their names, ``removed``
    incomplete ones; ``busy`` when another process was saving there (nothing was touched)."""

    root: Path
    restored: tuple[Path, ...] = ()
    removed: tuple[str, ...] = ()
    busy: bool = False

    def summary(self) -> str | None:
        """One line saying what was done, or None when nothing was."""
        if self.busy:
            return f"{self.root}: another process is writing a checkpoint there; its temporary folder was left alone"
        done = [f"put back {', '.join(p.name for p in self.restored)} (complete, left by a save interrupted before "
                "its rename)"] if self.restored else []
        if self.removed:
            done.append(f"removed {len(self.removed)} leftover(s) of an interrupted save or deletion, incomplete or "
                        f"superseded ({', '.join(self.removed)})")
        return f"{self.root}: {'; '.join(done)}" if done else None


def tidy_locked(root: Path) -> Recovery:
    """The tidying of :func:`recover_checkpoints`, under the caller's :func:`folder_lock`."""
    restored: list[Path] = []
    removed: list[str] = []
    leftovers = sorted((p for p in root.iterdir() if _LEFTOVER.match(p.name)),
                       key=lambda p: (_LEFTOVER.match(p.name).group(1) or "", p.name))  # type: ignore[union-attr]
    for path in leftovers:
        kind, name = _LEFTOVER.match(path.name).groups()  # type: ignore[union-attr]
        final = root / name
        if path.is_symlink() or not path.is_dir():  # never a checkpoint of ours: removed, never followed
            path.unlink()
            removed.append(path.name)
        elif kind != "del-" and _complete(path) and not final.exists() and not final.is_symlink():
            os.replace(path, final)
            restored.append(final)
        else:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    for stale in root.glob(".tmp-*"):  # anything else temporary (never a complete checkpoint)
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale.name)
    if restored:
        fsync_dir(root)
    return Recovery(root=root, restored=tuple(restored), removed=tuple(removed))


def tidy_checkpoints(root: str | Path) -> Recovery:
    """Tidy what a crash during a save left in the checkpoints folder ``root`` (see :func:`recover_checkpoints`),
    unless another process is saving there right now (then ``busy`` and nothing touched)."""
    root = Path(root)
    if not root.is_dir():
        return Recovery(root=root)
    with folder_lock(root, wait=False) as taken:
        if not taken:
            return Recovery(root=root, busy=any(root.glob(".tmp-*")))
        return tidy_locked(root)


def recover_checkpoints(root: str | Path) -> list[Path]:
    """Tidy what a crash during a save left in ``root``; returns the checkpoints it put back.

    A leftover folder ``.tmp-step_<n>-*`` (a new checkpoint being written) or ``.tmp-old-step_<n>-*`` (an old one
    moved aside while a checkpoint of the same step replaced it) that is complete (it has its manifest) and whose
    ``step_<n>`` is missing is renamed back into place, the new one before the old; every other leftover, and
    ``.tmp-del-*`` (a deletion of keep_last in progress), is removed. Nothing is touched while another process
    saves into ``root``.
    """
    return list(tidy_checkpoints(root).restored)


def checkpoints_root(path: str | Path) -> Path:
    """The checkpoints folder of ``path``: a run folder's ``checkpoints/``, a checkpoint folder's parent, or
    ``path`` itself (a checkpoints folder)."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        return path / "checkpoints"
    if checkpoint_step(path) is not None or (path / MANIFEST).exists():
        return path.parent
    return path


def recover_run(path: str | Path, *, announce: bool = True) -> Recovery:
    """The one routine every command runs when it opens a run folder (``load_run`` for sample and eval, the Trainer
    for train and ``--resume``): the leftovers of a killed save in its checkpoints folder are put back when
    complete and removed otherwise (:func:`recover_checkpoints`), and with ``announce`` one line on stderr says
    what was done (nothing when there was nothing to do)."""
    root = checkpoints_root(path)
    line: str | None
    try:
        report = tidy_checkpoints(root)
    except OSError as e:  # a read-only run folder: loading goes on with what is complete, and says why
        report, line = Recovery(root=root), f"{root}: the leftovers of an interrupted save could not be tidied ({e})"
    else:
        line = report.summary()
    if announce and line:
        print(f"mtd: {line}", file=sys.stderr, flush=True)
    return report
