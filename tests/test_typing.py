"""mypy, with the settings in pyproject.toml, passes on mtd_core and mtd_plugins (so CI type-checks them), and every
``Any`` left in them says why."""

import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_passes(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api")
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path),
                                str(ROOT / "mtd_core"), str(ROOT / "mtd_plugins")])
    assert status == 0, out + err


ANY_REASON = re.compile(r"#\s*Any:\s*\S")


def uncommented_any(source: str) -> list[int]:
    """The lines of ``source`` whose code uses the name ``Any`` without a ``# Any: <why>`` comment on that line.

    Tokens, not text: ``Any`` in a docstring or a comment does not count, and neither does ``from typing import``.
    """
    used: set[int] = set()
    reasons: set[int] = set()
    statement: list[tokenize.TokenInfo] = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and ANY_REASON.match(tok.string):
            reasons.add(tok.start[0])
        elif tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            if statement[:1] and statement[0].string != "from":  # a from-import only binds the name
                used.update(t.start[0] for t in statement if t.type == tokenize.NAME and t.string == "Any")
            statement = []
        elif tok.type not in (tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
            statement.append(tok)
    return sorted(used - reasons)


def test_the_any_checker_flags_an_uncommented_any() -> None:
    src = ("from typing import Any, cast\n"
           "x: Any = 1\n"
           "y: Any = 2  # Any: a reason\n"
           "def f(a: int,\n      b: Any) -> Any:  # a comment that is no reason\n    '''Any in a docstring.'''\n"
           "    return cast(Any, b)  # Any: another reason\n")
    assert uncommented_any(src) == [2, 5]


def test_every_any_says_why() -> None:
    """``Any`` only where no precise type (a Protocol, a Union, ``object``, an alias of mtd_core/types.py) fits, and
    then with a ``# Any: <why>`` comment on its line."""
    files = sorted(p.relative_to(ROOT).as_posix() for pkg in ("mtd_core", "mtd_plugins")
                   for p in (ROOT / pkg).rglob("*.py"))
    assert files
    bad = {f: lines for f in files if (lines := uncommented_any((ROOT / f).read_text(encoding="utf-8")))}
    assert not bad, "`Any` without a `# Any: <why>` comment (or use an alias of mtd_core/types.py):\n" + "\n".join(
        f"  {f}: lines {lines}" for f, lines in sorted(bad.items()))
