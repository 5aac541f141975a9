"""The ``mtd`` command. Each sub-command lives in its own module exposing ``register(subparsers)``,
which adds its parser and sets ``func`` (taking the parsed namespace, returning an exit code).

This module stays light (standard library only): the console script imports it, then :func:`run` imports the
sub-commands (and torch) inside its Ctrl-C and closed-stdout handling, so neither ends in a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence

# Sub-command modules, in the order `mtd --help` lists them.
COMMANDS = ("demo", "train", "sample", "eval", "config", "data", "plugins")

# Exit statuses of a Ctrl-C and of a closed stdout: 128 + the signal's number, as a shell reports a process the
# signal ended (SIGINT 2, SIGPIPE 13).
INTERRUPTED = 130
BROKEN_PIPE = 141


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available sub-command."""
    parser = argparse.ArgumentParser(prog="mtd", description="Multi-modal, multi-task diffusion (MT-Diffusion).")
    parser.add_argument("--version", action="version", version=f"mtd {importlib.import_module('mtd_core').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"mtd_core.cli.{name}").register(sub)
    return parser


def interrupted() -> int:
    """Say ``mtd: interrupted`` on stderr and return the exit status of a Ctrl-C."""
    try:
        print("mtd: interrupted", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed too: nothing more to say
        pass
    return INTERRUPTED


def stdout_closed() -> bool:
    """Whether the reader of stdout has gone (``mtd ... | head -1``): its buffer cannot be flushed, or the pipe
    reports an error (POLLERR) when there is nothing to flush."""
    try:
        sys.stdout.flush()
        fd = sys.stdout.fileno()
    except BrokenPipeError:
        return True
    except (OSError, ValueError):  # no file descriptor (a captured stdout): not a pipe that closed
        return False
    import select

    if not hasattr(select, "poll"):
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def broken_pipe() -> int:
    """End quietly after the reader of stdout went away: what is still buffered goes to the null device (so the
    interpreter's last flush does not complain), and the status is that of a process ended by SIGPIPE."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return BROKEN_PIPE


def _build_parser_or_exit() -> argparse.ArgumentParser:
    """:func:`build_parser`, during which a Ctrl-C ends the process at once with ``mtd: interrupted`` and 130: the
    sub-commands import torch then, nothing is yet to be saved, and an import may swallow a KeyboardInterrupt
    (the command would then go on as if nothing had happened)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return build_parser()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: os._exit(interrupted()))
    try:
        return build_parser()
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mtd`` console script: the exit status of the command (130 after a Ctrl-C, 141 when
    stdout was closed)."""
    try:
        parser = _build_parser_or_exit()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return interrupted()
    except BrokenPipeError:  # the commands report any other broken pipe (handle_errors); here it is stdout's
        return broken_pipe()


def _exit_status(e: SystemExit) -> int:
    """The status a SystemExit stands for (a message, as ``sys.exit("...")`` gives, goes to stderr: status 1)."""
    if e.code is None or isinstance(e.code, int):
        return e.code or 0
    print(e.code, file=sys.stderr)
    return 1


def run() -> None:
    """The ``mtd`` console script and ``python -m mtd_core.cli``: :func:`main`, then exit with its status. A Ctrl-C
    at any moment ends with ``mtd: interrupted`` and status 130 (``mtd train`` saves a checkpoint first and exits
    0); one that arrives once the command is done (the second of two in quick succession, after the checkpoint was
    written) is ignored, so the process exits with that status instead of dying by SIGINT. A closed stdout ends
    quietly with status 141."""
    try:
        try:
            code = main()
        except SystemExit as e:  # argparse's --help, --version and usage errors: flushed below all the same
            code = _exit_status(e)
        try:
            sys.stdout.flush()  # here, where a closed pipe is handled, not in the interpreter's teardown
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # from here on, a Ctrl-C changes nothing
    except KeyboardInterrupt:
        code = interrupted()
    except BrokenPipeError:
        code = broken_pipe()
    # after data-parallel training the exit skips the interpreter's teardown (exit_process); a command that never
    # imported the module joined no group, and importing it (and torch) only to learn that would slow every exit
    distributed = sys.modules.get("mtd_core.training.distributed")
    if distributed is not None:
        distributed.exit_process(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
