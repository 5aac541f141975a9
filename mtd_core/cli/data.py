"""``mtd data pack CONFIG OUT [--set key=value ...] [--shard-mb N] [--no-progress]``: pack the ``[dataset]`` of a
run config into a folder of .npy shards, which a config then reads with ``name = "packed"``."""

from __future__ import annotations

import argparse

from mtd_core.cli.common import check_at_least, check_config_file, handle_errors


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mtd data``."""
    p = subparsers.add_parser("data", help="prepare datasets (pack one for streaming)",
                              description="Prepare datasets for training.")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    pack = sub.add_parser(
        "pack", help="pack the [dataset] of a run config into .npy shards read from disk (larger-than-memory data)",
        description="Pack the [dataset] table of a run config (any source: npz, png_folder, IDX, digits, a plugin's "
                    "dataset; its keys and holdout applied, its transforms left to training) into OUT: per-split, "
                    "per-field .npy shards and a manifest with counts, shapes, dtypes and SHA-256 checksums. A "
                    "config reads it with [dataset] name = \"packed\", path = \"OUT\" (docs/data.md).")
    pack.add_argument("config", help="the TOML run config whose [dataset] is packed")
    pack.add_argument("out", help="the folder to write (must not exist, or be empty)")
    pack.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config value before packing, e.g. dataset.limit_train=1000 (repeatable)")
    pack.add_argument("--shard-mb", type=int, default=256, metavar="MIB",
                      help="about how many MiB of examples one shard holds (default 256: few files, each small "
                           "enough to copy and checksum on its own)")
    pack.add_argument("--no-progress", action="store_true", help="no progress bar")
    pack.set_defaults(func=pack_main)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


@handle_errors("data pack")
def pack_main(args: argparse.Namespace) -> int:
    """Run ``mtd data pack``."""
    from mtd_core.data.build import resolve_dataset_config
    from mtd_core.data.packed_write import check_pack_target, pack_dataset
    from mtd_core.plugins.registry import get_registry
    from mtd_core.tomlio import dumps_toml
    from mtd_core.training.config import read_config
    from mtd_core.training.datapaths import absolute_here

    check_at_least("--shard-mb", args.shard_mb, 1)
    out = check_pack_target(args.out)  # before any data is read
    config = read_config(check_config_file(args.config), args.overrides)
    registry = get_registry()
    dataset = resolve_dataset_config(config.dataset, registry)
    manifest = pack_dataset(dataset, registry, out, shard_mb=args.shard_mb, progress=not args.no_progress,
                            source=absolute_here(dataset.to_dict()))
    counts = ", ".join(f"{split} {manifest.count(split)}" for split in manifest.splits)
    files = [f for shards in manifest.splits.values() for s in shards for fs in s.files.values() for f in fs]
    size = sum(f.bytes for f in files) / 2**20
    fields = ", ".join(f"{name} ({spec.kind if spec.kind == 'text' else spec.stored})"
                       for name, spec in manifest.fields.items())
    print(f"packed {counts} examples into {out}: {len(files)} files, {size:.1f} MiB; fields {fields}")
    snippet: dict[str, object] = {"name": "packed", "path": str(out)}
    if dataset.transforms:  # not applied at pack time: the config that reads the packed data applies them
        snippet["transforms"] = dataset.transforms
    print("read it with:\n\n" + dumps_toml({"dataset": snippet}), end="")
    return 0
