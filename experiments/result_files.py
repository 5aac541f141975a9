"""Reading the experiments' result JSONs for the report, refusing any that the report cannot stand behind.

A result lives at ``<results>/<preset>/<experiment>/[variants/<variant>/]<split>/seed<S>.json`` (split "val" or
"test"); ``<results>/archive/`` holds the results from before the evaluation protocol and is never read. A result
must name its provenance (commit, command and the resolved config with its task set, backbone and trainer), and
one variant name (the defaults included) must mean one resolved task set per experiment and preset.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from experiments.common import RESULT_FORMAT
from mtd_core.errors import MTDError

ARCHIVE = "archive"
SPLITS = ("val", "test")
REQUIRED = ("experiment", "preset", "seed", "split", "metrics")
PROVENANCE = ("commit", "command", "config")
CONFIG = ("taskset", "backbone", "trainer")


@attrs.frozen
class Run:
    """One result JSON.

    Attributes:
        path: the file.
        experiment: the experiment's name.
        preset: the preset's name.
        seed: the seed.
        data: the parsed JSON.
        split: "val" or "test".
        variant: the design study's name ("" for the experiment's defaults).
    """

    path: Path
    experiment: str
    preset: str
    seed: int
    data: dict[str, Any]
    split: str = "val"
    variant: str = ""

    @property
    def metrics(self) -> dict[str, float]:
        """Metric name -> value, a mean over draws (non-finite values stored as strings are converted back)."""
        return {k: float(v) for k, v in self.data["metrics"].items()}

    def draws(self, key: str) -> list[float] | None:
        """The per-draw values of ``key`` (its mean alone when the result has no draws of it); None without it."""
        per_draw = self.data.get("draws", {}).get(key)
        if per_draw:
            return [float(v) for v in per_draw]
        value = self.data["metrics"].get(key)
        return None if value is None else [float(value)]

    @property
    def provenance(self) -> dict[str, Any]:
        """The result's provenance (commit, command, config)."""
        return self.data["provenance"]

    @property
    def setting(self) -> tuple[str, str]:
        """(experiment, variant)."""
        return self.experiment, self.variant


def _variant(path: Path, results: Path, data: dict[str, Any]) -> str:
    if data.get("variant"):
        return str(data["variant"])
    parts = path.relative_to(results).parts
    return parts[parts.index("variants") + 1] if "variants" in parts[:-1] else ""


def check_provenance(path: Path, data: dict[str, Any]) -> None:
    """An MTDError naming ``path`` and the first missing provenance key."""
    prov = data.get("provenance")
    if not isinstance(prov, dict):
        raise MTDError(f"{path}: the result lacks the key 'provenance' (a result from before the evaluation "
                       f"protocol belongs in {ARCHIVE}/)")
    for key in PROVENANCE:
        if not prov.get(key):
            raise MTDError(f"{path}: the result lacks the key 'provenance.{key}'")
    config = prov["config"]
    for key in CONFIG:
        if not isinstance(config, dict) or key not in config:
            raise MTDError(f"{path}: the result lacks the key 'provenance.config.{key}'")


def read_run(path: Path, results: Path) -> Run:
    """One result; an MTDError naming the file when it is not a complete result under the protocol."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise MTDError(f"{path}: not a readable result JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != RESULT_FORMAT:
        raise MTDError(f"{path}: not an experiment result (expected \"format\": {RESULT_FORMAT!r})")
    check_provenance(path, data)
    for key in REQUIRED:
        if key not in data:
            raise MTDError(f"{path}: the result lacks the key {key!r}")
    if data["split"] not in SPLITS:
        raise MTDError(f"{path}: split must be one of {list(SPLITS)}, got {data['split']!r}")
    return Run(path=path, experiment=data["experiment"], preset=data["preset"], seed=int(data["seed"]), data=data,
               split=data["split"], variant=_variant(path, results, data))


def check_designs(runs: Sequence[Run]) -> None:
    """An MTDError naming both files when one (preset, experiment, variant) holds two resolved task sets."""
    seen: dict[tuple[str, str, str], tuple[str, Path]] = {}
    for r in runs:
        key = (r.preset, r.experiment, r.variant)
        design = json.dumps(r.provenance["config"]["taskset"], sort_keys=True)
        if key not in seen:
            seen[key] = (design, r.path)
        elif seen[key][0] != design:
            name = f"variant {r.variant!r}" if r.variant else "the defaults"
            raise MTDError(f"{seen[key][1]} and {r.path}: {name} of {r.experiment} (preset {r.preset}) names two "
                           f"different designs (provenance.config.taskset differs); give each design its own variant "
                           f"name or archive the older results")


def load_runs(results: Path) -> list[Run]:
    """Every result under ``results`` except ``results/archive/``, checked (see the module's docstring)."""
    if not results.is_dir():
        return []
    paths = sorted(p for p in results.rglob("seed*.json")
                   if p.relative_to(results).parts[0] != ARCHIVE and len(p.relative_to(results).parts) > 1)
    runs = [read_run(p, results) for p in paths]
    check_designs(runs)
    return runs


Grouped = dict[str, dict[str, dict[tuple[str, str], list[Run]]]]
"""preset -> split -> (experiment, variant) -> runs sorted by seed."""


def group(runs: Sequence[Run]) -> Grouped:
    """preset -> split -> (experiment, variant) -> runs sorted by seed."""
    out: Grouped = {}
    for r in runs:
        out.setdefault(r.preset, {}).setdefault(r.split, {}).setdefault(r.setting, []).append(r)
    for by_split in out.values():
        for by_setting in by_split.values():
            for rs in by_setting.values():
                rs.sort(key=lambda r: r.seed)
    return out


def defaults(by_setting: dict[tuple[str, str], list[Run]]) -> dict[str, list[Run]]:
    """experiment -> runs of its defaults (no variant): what the claims are read from."""
    return {e: rs for (e, v), rs in by_setting.items() if not v}
