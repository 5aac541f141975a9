"""What every sub-command shares: one-line errors (:func:`handle_errors`) and the checks of options that name a
device, an output folder, a config file or a seed, each a ConfigError naming the option and what was expected."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

from mtd_core.errors import ConfigError, MTDError

DEBUG_ENV = "MTD_DEBUG"
SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes an unsigned 64-bit seed


def handle_errors(command: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Turn any failure into ``mtd COMMAND: error: ...`` on stderr and exit code 1, without a traceback: an
    MTDError's own message, anything else with its type (a bug or an environment problem). With MTD_DEBUG=1 the
    exception propagates, traceback and all. A closed stdout (``mtd ... | head -1``) ends quietly with status 141."""
    def wrap(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(fn)
        def run(args: argparse.Namespace) -> int:
            from mtd_core.cli import broken_pipe, stdout_closed

            try:
                return fn(args)
            except MTDError as e:
                if os.environ.get(DEBUG_ENV):
                    raise
                print(f"mtd {command}: error: {e}", file=sys.stderr)
                return 1
            except Exception as e:  # noqa: BLE001 - the command line's last line of defence
                if isinstance(e, BrokenPipeError) and stdout_closed():
                    return broken_pipe()
                if os.environ.get(DEBUG_ENV):
                    raise
                print(f"mtd {command}: error: {type(e).__name__}: {e} (set {DEBUG_ENV}=1 for the traceback)",
                      file=sys.stderr)
                return 1
        return run
    return wrap


def check_device(device: str, option: str = "--device") -> None:
    """A ConfigError unless ``device`` can be used here (a CUDA device needs CUDA)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"{option} {device!r}: not a device ({e}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option} {device!r}: no CUDA device is available on this machine; use cpu")


def check_out_dir(path: str | Path, option: str = "--out") -> Path:
    """``path`` as a folder to write into: a ConfigError when it, or a folder above it, is an existing file."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{option} {str(out)!r} is an existing file; it must name a folder (new or existing)")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{option} {str(out)!r}: {str(parent)!r} is an existing file, so no folder can be "
                              "made under it; it must name a folder (new or existing)")
    return out


def check_config_file(path: str | Path) -> Path:
    """``path`` as a TOML config to read: a ConfigError naming it when it is a folder, cannot be read or is not
    UTF-8 text (a missing file is reported by the reader, ``read_toml``)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a folder; expected a TOML run config file (e.g. examples/configs/image_label.toml)")
    if not p.exists():
        return p
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config file ({e.strerror or e})") from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{p}: not UTF-8 text (line {line}, byte {e.start} is "
                          f"{data[e.start:e.start + 1]!r}); a TOML config must be UTF-8") from None
    return p


def check_seed(seed: int, option: str = "--seed", high: int = SEED_MAX, why: str = "") -> int:
    """``seed`` as a seed of torch's generators: a ConfigError unless it is an integer in 0..``high`` (default
    2**64 - 1, the most torch.Generator.manual_seed takes; ``why`` says what sets a lower bound)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= high:
        bits = f" (2**{(high + 1).bit_length() - 1} - 1)" if (high + 1) & high == 0 else ""
        raise ConfigError(f"{option} must be an integer in 0..{high}{bits}, got {seed!r}{why}")
    return seed


def check_at_least(option: str, value: int, low: int, note: str = "") -> int:
    """A ConfigError unless ``value >= low`` (``note``: e.g. " (0 = all)")."""
    if value < low:
        raise ConfigError(f"{option} must be at least {low}{note}, got {value}")
    return value


def key_value_pairs(option: str, items: list[str], form: str, example: str, what: str = "name", hint: str = ""
           ) -> list[tuple[str, str]]:
    """``NAME=VALUE`` items as (name, value) pairs: a ConfigError for an item without ``=`` or a name given twice
    (``what`` says what a name is, ``hint`` how to give several values)."""
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"{option} {item!r}: expected {form}, e.g. {example}")
        if name in pairs:
            raise ConfigError(f"{option}: {what} {name!r} is given twice ({name}={pairs[name]} and {item}); give it "
                              f"once{hint}")
        pairs[name] = value
    return list(pairs.items())
