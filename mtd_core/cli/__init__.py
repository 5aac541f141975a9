"""The ``mtd`` command. Each sub-command lives in its own module exposing ``register(subparsers)``,
which adds its parser and sets ``func`` (taking the parsed namespace, returning an exit code)."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence

# Sub-command modules, in the order `mtd --help` lists them.
COMMANDS = ("demo", "train", "sample", "eval", "config", "plugins")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available sub-command."""
    parser = argparse.ArgumentParser(prog="mtd", description="Multi-modal, multi-task diffusion (MT-Diffusion).")
    parser.add_argument("--version", action="version", version=f"mtd {importlib.import_module('mtd_core').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"mtd_core.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mtd`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The ``mtd`` console script and ``python -m mtd_core.cli``: :func:`main`, then exit with its status. A Ctrl-C
    that arrives once the command is done (the second of two in quick succession, after the checkpoint was written)
    is ignored, so the process exits with that status instead of dying by SIGINT."""
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # after data-parallel training the exit skips the interpreter's teardown (exit_process); a command that never
    # imported the module joined no group, and importing it (and torch) only to learn that would slow every exit
    distributed = sys.modules.get("mtd_core.training.distributed")
    if distributed is not None:
        distributed.exit_process(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
