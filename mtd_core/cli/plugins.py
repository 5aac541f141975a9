"""``mtd plugins list`` and ``mtd plugins validate``: what is installed, and whether modality plugins work.

    mtd plugins list [--json] [--verbose]     every registered modality, dataset, backbone, metric and sampler, with
                                              its plugin, distribution, version and status, and every plugin problem
    mtd plugins validate [KIND ...]           build, run forward and backward, and round-trip each modality
                                              (default: all); exit 1 if any check fails or any plugin failed to load
    mtd plugins new NAME [--out DIR]          write a plugin package (entry point, modality, conformance test)
                                              that installs, validates and passes its kit as it is
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TYPE_CHECKING, TextIO

from mtd_core.cli.common import handle_errors, key_value_pairs
from mtd_core.errors import MTDError
from mtd_core.plugins.registry import BLOCK_ENV, PluginRecord, Registry, get_registry

if TYPE_CHECKING:
    from mtd_core.plugins.validate import ValidationReport
    from mtd_core.types import ConfigDict

COLUMNS = ("name", "what", "roles", "plugin", "distribution", "version", "status", "error")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``plugins`` with its ``list`` and ``validate`` sub-commands."""
    parser = subparsers.add_parser("plugins", help="list and validate installed plugins",
                                   description="List and validate the installed mtd plugins.")
    sub = parser.add_subparsers(dest="plugins_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    p_list = sub.add_parser("list", help="list registered modalities, datasets, backbones, metrics and samplers",
                            description="List everything the installed plugins register, and every plugin problem.")
    p_list.add_argument("--json", action="store_true", help="print the records as a JSON list")
    p_list.add_argument("-v", "--verbose", action="store_true", help="also print the traceback of each failure")
    p_list.set_defaults(func=cmd_list)

    p_val = sub.add_parser("validate", help="check that modality plugins build, train and round-trip",
                           description="Run validate_modality on each named modality kind (default: all). "
                                       "Exits 1 if any check fails or any plugin failed to load.")
    p_val.add_argument("kinds", nargs="*", metavar="KIND", help="modality kinds to validate (default: all)")
    p_val.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="a modality option for the validation (VALUE parsed as JSON, else a string); "
                            "repeatable; applies to every named kind")
    p_val.add_argument("--json", action="store_true", help="print the validation reports as a JSON list")
    p_val.set_defaults(func=cmd_validate)

    p_new = sub.add_parser("new", help="write a new modality plugin package",
                           description="Write NAME/ (a pyproject with the entry point, a modality skeleton and a "
                                       "conformance test) that installs, validates and passes its kit unchanged.")
    p_new.add_argument("name", help="the distribution name, e.g. mtd-stars")
    p_new.add_argument("--kind", default=None, help="the modality kind (default: NAME without 'mtd-', '-' -> '_')")
    p_new.add_argument("--out", default=".", help="the folder to write NAME/ into (default: here)")
    p_new.set_defaults(func=cmd_new)


def _quiet_registry() -> Registry:
    """The process-wide registry, loaded without logging warnings (these commands print every problem)."""
    log = logging.getLogger("mtd.plugins")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        registry = get_registry()
        registry.load()
    finally:
        log.setLevel(level)
    return registry


def format_table(records: list[PluginRecord]) -> str:
    """The records as a plain-text table with the columns of :data:`COLUMNS` (errors shortened to one line)."""
    rows = [[c.upper() for c in COLUMNS]]
    for r in records:
        error = (r.error or "").splitlines()[0] if r.error else ("blocked by " + BLOCK_ENV if r.status == "blocked" else "")
        rows.append([r.name, r.what, ",".join(r.roles), r.plugin, r.distribution or "(explicit)", r.version or "",
                     r.status, error])
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    return "".join(("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1]).rstrip() + "\n"
                   for row in rows)


def cmd_list(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print every record; the exit code is 0 even when some plugins failed (``validate`` is the check)."""
    out = out or sys.stdout
    registry = _quiet_registry()
    records = registry.records
    if args.json:
        rows = [r.to_dict() for r in records]
        if not args.verbose:
            for row in rows:
                row.pop("traceback")
        json.dump(rows, out, indent=2)
        out.write("\n")
        return 0
    out.write(format_table(records))
    problems = [r for r in records if r.status == "failed"]
    if problems:
        out.write(f"\n{len(problems)} problem{'s' if len(problems) > 1 else ''}:\n")
        for r in problems:
            out.write(r.message() + "\n")
            if args.verbose and r.traceback:
                out.write("\n".join("    " + line for line in r.traceback.rstrip().splitlines()) + "\n")
    for name in registry.blocked_unmatched:
        out.write(f"note: {BLOCK_ENV} names {name!r}, but no installed plugin or distribution has that name\n")
    return 0


def _parse_options(pairs: list[str]) -> ConfigDict:
    """``KEY=VALUE`` strings to a dict (VALUE as JSON when it parses, else the raw string; the modality's own
    validation checks the types). A key given twice is an error naming it."""
    options: ConfigDict = {}
    for key, value in key_value_pairs("--option", pairs, "KEY=VALUE", "hidden=16", "option"):
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _report_dict(kind: str, report: ValidationReport) -> ConfigDict:
    """A JSON-representable form of a ValidationReport (kind, ok, problems, checks)."""
    return {"kind": kind, "ok": bool(report.ok), "problems": list(report.problems),
            "checks": list(getattr(report, "checks", []))}


def cmd_validate(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Validate the named modality kinds (default: all); 1 if anything failed, including plugin loading."""
    from mtd_core.plugins.validate import validate_modality

    out = out or sys.stdout
    registry = _quiet_registry()
    try:
        options = _parse_options(args.option)
    except MTDError as e:
        print(f"mtd plugins validate: error: {e}", file=sys.stderr)
        return 2
    failures = registry.failures
    kinds = list(args.kinds) or registry.modality_kinds()
    results: list[ConfigDict] = []
    for kind in kinds:
        try:
            cls = registry.modality_class(kind)
        except MTDError as e:
            results.append({"kind": kind, "ok": False, "problems": [str(e)], "checks": []})
            continue
        missing = [o for o in getattr(cls, "required_options", ()) if o not in options]
        if missing and not args.kinds:  # validated when named with its options (--option)
            results.append({"kind": kind, "ok": True, "skipped": f"needs --option {missing[0]}=...", "checks": []})
            continue
        try:
            report = validate_modality(cls, dict(options) or None)
            results.append(_report_dict(kind, report))
        except Exception as e:  # validate_modality should never raise; report it if it does
            results.append({"kind": kind, "ok": False, "checks": [],
                            "problems": [f"validate_modality raised {type(e).__name__}: {e}"]})
    ok = all(r["ok"] for r in results) and not failures
    if args.json:
        json.dump({"ok": ok, "modalities": results, "load_failures": [r.to_dict() for r in failures]}, out, indent=2)
        out.write("\n")
        return 0 if ok else 1
    for r in results:
        if r.get("skipped"):
            out.write(f"{r['kind']}: skipped ({r['skipped']}; name it to validate it)\n")
        elif r["ok"]:
            out.write(f"{r['kind']}: ok ({len(r['checks'])} checks passed)\n")
        else:
            out.write(f"{r['kind']}: FAILED\n")
            for problem in r["problems"]:
                out.write("\n".join(("  - " if i == 0 else "    ") + line
                                    for i, line in enumerate(str(problem).splitlines())) + "\n")
    if not kinds:
        out.write("no modality plugins are registered\n")
    if failures:
        out.write(f"\n{len(failures)} plugin problem{'s' if len(failures) > 1 else ''} while loading:\n")
        for rec in failures:
            out.write(rec.message() + "\n")
    n_bad = sum(not r["ok"] for r in results)
    n_skip = sum(bool(r.get("skipped")) for r in results)
    out.write(f"\n{len(results) - n_bad - n_skip} of {len(results) - n_skip} modalities passed"
              + (f", {n_skip} skipped" if n_skip else "")
              + (f"; {len(failures)} plugin load failures" if failures else "") + "\n")
    return 0 if ok else 1


@handle_errors("plugins new")
def cmd_new(args: argparse.Namespace) -> int:
    """Write the plugin package and say what to do next."""
    from mtd_core.cli.scaffold import write_plugin

    root = write_plugin(args.name, args.out, args.kind)
    print(f"mtd plugins new: wrote {root}\nnext: pip install -e \"{root}[test]\" && mtd plugins validate && "
          f"pytest {root}")
    return 0
