"""The README's Python example runs as written (a few training steps instead of 700), with the library's defaults and
without a warning, and scores the label head on digits it did not train on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_example() -> str:
    section = README.read_text(encoding="utf-8").split("## In Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README.md: no ```python block under '## In Python'"
    return match.group(1)


def test_the_readme_example_uses_the_defaults_and_a_held_out_split():
    code = python_example()
    assert "aux_channels" not in code and "head_grad" not in code and "known_input" not in code
    assert "range(700)" in code and "held_out" in code


def test_the_readme_example_runs_without_a_warning(tmp_path):
    code = python_example().replace("range(700)", "range(3)")
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    out = subprocess.run([sys.executable, "-W", "error", str(script)], capture_output=True, text=True, cwd=tmp_path,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "held-out accuracy:" in out.stdout
