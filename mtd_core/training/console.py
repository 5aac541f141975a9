"""What a training loop shows and hears: the progress bar, and the SIGINT/SIGTERM handlers that ask for a clean stop
(a checkpoint after the current step; a second Ctrl-C aborts at once)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from types import FrameType


class ProgressBar(Protocol):
    """What the trainer uses of a tqdm bar (tqdm has no type hints)."""

    def update(self, n: float = 1) -> object: ...

    def set_postfix(self, *, refresh: bool = True, **kwargs: str) -> None: ...

    def close(self) -> None: ...


def progress_bar(enabled: bool, target: int, initial: int) -> ProgressBar | None:
    """A tqdm bar from step ``initial`` to ``target``, or None when disabled or nothing is left to do."""
    if not enabled or initial >= target:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=target, initial=initial, desc="train", unit="step", dynamic_ncols=True)


def install_stop_handlers(stopping: Callable[[], bool], stop: Callable[[str], None],
                          announce: bool) -> Callable[[], None]:
    """Route SIGINT and SIGTERM to ``stop(signal name)``; a SIGINT while ``stopping()`` raises KeyboardInterrupt.
    ``announce``: print what happens (rank 0). Returns the function that puts the previous handlers back (a no-op
    outside the main thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stopping() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: abort without waiting
        stop(name)
        if announce:
            print(f"\nmtd: {name} received; saving a checkpoint after this step (Ctrl-C again to abort)", flush=True)

    for s in previous:
        signal.signal(s, handler)

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)
    return restore
