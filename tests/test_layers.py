"""The layering of mtd_core: every module imports on its own (no import cycle depends on the order of imports), and
the lower layers do not import the higher ones (docs/architecture.md)."""

from __future__ import annotations

import ast
import importlib
import multiprocessing
import pkgutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# layer -> the mtd_core packages/modules it may import at module level (besides itself and mtd_core.errors)
ALLOWED = {
    "mtd_core.types": set(),
    "mtd_core.config_types": set(),
    "mtd_core.outputs": {"mtd_core.types"},
    "mtd_core.design": set(),
    "mtd_core.diffusion": {"mtd_core.types", "mtd_core.config_types", "mtd_core.outputs"},
    "mtd_core.imageio": set(),
    "mtd_core.values": {"mtd_core.types", "mtd_core.imageio"},
    "mtd_core.modality": {"mtd_core.types", "mtd_core.config_types", "mtd_core.design", "mtd_core.diffusion",
                          "mtd_core.values"},
    # the data layer (readers, packed datasets, the loader) never imports training, sampling or the CLI
    "mtd_core.data": {"mtd_core.types", "mtd_core.imageio", "mtd_core.modality"},
}


def _modules() -> list[str]:
    names = []
    for package in ("mtd_core", "mtd_plugins"):
        root = ROOT / package
        names.append(package)
        names += [m.name for m in pkgutil.walk_packages([str(root)], prefix=f"{package}.")]
    return sorted(n for n in names if not n.endswith("__main__"))


def _import_alone(name: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("mtd_core", "mtd_plugins")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
        queue.put((name, None))
    except Exception as e:  # noqa: BLE001 - reported by the test
        queue.put((name, f"{type(e).__name__}: {e}"))


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_every_module_imports_on_its_own() -> None:
    import torch  # noqa: F401  (loaded once in the parent; each child starts with no mtd module loaded)

    ctx = multiprocessing.get_context("fork")
    failures = []
    for name in _modules():
        queue = ctx.Queue()
        proc = ctx.Process(target=_import_alone, args=(name, queue))
        proc.start()
        proc.join(120)
        got, error = queue.get(timeout=5)
        if error:
            failures.append(f"{got}: {error}")
    assert not failures, "\n".join(failures)


def _top_level_imports(path: Path) -> set[str]:
    """The mtd modules a file imports at module level, outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.update(f"{node.module}.{a.name}" for a in node.names)  # a name may be a module: from mtd_core import x
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m.startswith("mtd_core")}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_lower_layers_do_not_import_higher_ones(layer: str) -> None:
    base = ROOT / Path(*layer.split("."))
    files = sorted(base.glob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
    allowed = ALLOWED[layer] | {layer, "mtd_core.errors"}
    bad = {f"{f.relative_to(ROOT)}: {m}" for f in files for m in _top_level_imports(f)
           if not any(m == a or m.startswith(a + ".") for a in allowed)}
    assert not bad, sorted(bad)
