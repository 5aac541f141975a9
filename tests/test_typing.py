"""mypy, with the settings in pyproject.toml, passes on mtd_core and mtd_plugins (so CI type-checks them)."""

from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api")
ROOT = Path(__file__).resolve().parents[1]


def test_mypy_passes(tmp_path: Path) -> None:
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path),
                                str(ROOT / "mtd_core"), str(ROOT / "mtd_plugins")])
    assert status == 0, out + err
