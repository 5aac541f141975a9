"""Reading and writing the plain configs of mtd: TOML files in, TOML or JSON text out.

Every config in mtd (modality, task set, model, run) is a plain dict of JSON/TOML types; :func:`plain` makes one
from nested tuples, :func:`read_toml` reads a file with a precise error, :func:`dumps_toml` writes one back
(the standard library's tomllib only reads).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mtd_core.errors import ConfigError

if TYPE_CHECKING:  # only type names: reading configs needs no torch
    from mtd_core.types import ConfigDict, ConfigMapping, ConfigValue

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

TOMLDecodeError = tomllib.TOMLDecodeError


def plain(v: object) -> ConfigValue:
    """Tuples to lists, recursively, so a config holds JSON/TOML types only."""
    if isinstance(v, Mapping):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def loads_toml(text: str) -> ConfigDict:
    """Parse TOML text (raises tomllib.TOMLDecodeError)."""
    return tomllib.loads(text)


def read_toml(path: str | Path, what: str = "config") -> ConfigDict:
    """The TOML file at ``path`` as a dict; a ConfigError names the file when it is missing or invalid."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; expected a TOML {what} file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                          f"expected a TOML {what} file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what} file ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def _key(k: str) -> str:
    return k if k and k.replace("_", "").replace("-", "").isalnum() and k.isascii() else json.dumps(k)


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v if x is not None) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise ConfigError(f"cannot write {v!r} ({type(v).__name__}) as TOML")


def _is_table_list(v: object) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, Mapping) for x in v)


def _emit_table(lines: list[str], name: str, table: ConfigMapping, header: str) -> None:
    lines += ["", header]
    nested = []
    for k, v in table.items():
        if v is None:
            lines.append(f"# {_key(k)} = (none)")
        elif not header.startswith("[[") and (isinstance(v, Mapping) or _is_table_list(v)):
            nested.append((k, v))
        else:
            lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in nested:
        sub = f"{name}.{_key(k)}"
        if isinstance(v, Mapping):
            _emit_table(lines, sub, v, f"[{sub}]")
        else:
            for item in v:
                _emit_table(lines, sub, item, f"[[{sub}]]")


def dumps_toml(config: ConfigMapping) -> str:
    """TOML text that tomllib reads back to the same values. TOML has no null: None values are written as
    comments (reading back omits them, so they take the option's default)."""
    lines: list[str] = []
    tables = [(k, v) for k, v in config.items() if isinstance(v, Mapping) or _is_table_list(v)]
    for k, v in config.items():  # plain keys first: after a table header they would belong to that table
        if v is not None and (k, v) not in tables:
            lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in tables:
        if isinstance(v, Mapping):
            _emit_table(lines, _key(k), v, f"[{_key(k)}]")
        else:
            for item in v:
                _emit_table(lines, _key(k), item, f"[[{_key(k)}]]")
    return "\n".join(lines).lstrip("\n") + "\n"


__all__ = ["TOMLDecodeError", "dumps_toml", "loads_toml", "plain", "read_toml"]
