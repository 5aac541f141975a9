"""``mtd config show CONFIG.toml [--set key=value ...] [--json]``: print the fully resolved run config."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from mtd_core.cli.common import check_config_file, handle_errors

if TYPE_CHECKING:
    from mtd_core.types import ConfigDict


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mtd config``."""
    p = subparsers.add_parser("config", help="inspect run configs",
                              description="Inspect run configs without training.")
    sub = p.add_subparsers(dest="config_command", metavar="ACTION")
    show = sub.add_parser("show", help="print the fully resolved config (every default filled in), then exit",
                          description="Print the fully resolved run config: every default filled in and every "
                                      "key validated (unknown keys fail with the nearest valid key).")
    show.add_argument("config", help="the TOML run config")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config value before resolving (repeatable)")
    show.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    show.set_defaults(func=show_main)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


@handle_errors("config show")
def show_main(args: argparse.Namespace) -> int:
    """Run ``mtd config show``."""
    from mtd_core.tomlio import dumps_toml
    from mtd_core.training.config import read_config, resolve_config

    resolved = resolve_config(read_config(check_config_file(args.config), args.overrides)).to_dict()
    print(json.dumps(resolved, indent=2) if args.json else dumps_toml(resolved), end="" if not args.json else "\n")
    report = ratio_report(resolved["taskset"])
    if report:  # TOML comments after the config; on stderr beside JSON, which has no comments
        print("\n".join(f"# {line}" for line in report), file=sys.stderr if args.json else sys.stdout)
    return 0


def ratio_report(taskset_config: ConfigDict) -> list[str]:
    """One line per aggregated modality: its peak ratio max_t lambda_t / sqrt(abar_t) and where it lives in Z (the
    task set warns above PEAK_RATIO_BOUND on shared channels; docs/math.md, section 2)."""
    from mtd_core.taskset import PEAK_RATIO_BOUND, TaskSet

    ts = TaskSet.from_config(taskset_config)
    where = (f"{ts.aux_channels} auxiliary channel(s) of their own" if ts.aux_channels
             else f"the base's channels (warned above {PEAK_RATIO_BOUND:g})")
    return [f"peak lambda_t / sqrt(abar_t) of {name!r}: {ratio:.3g} (encodings on {where})"
            for name, ratio in ts.peak_ratios().items()]
