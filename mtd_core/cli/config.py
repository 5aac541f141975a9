"""``mtd config show CONFIG.toml [--set key=value ...] [--json]``: print the fully resolved run config."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mtd_core.cli.train import handle_errors


def register(subparsers: Any) -> None:
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

    resolved = resolve_config(read_config(args.config, args.overrides)).to_dict()
    print(json.dumps(resolved, indent=2) if args.json else dumps_toml(resolved), end="" if not args.json else "\n")
    return 0
