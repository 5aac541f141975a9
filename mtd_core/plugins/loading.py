"""Loading plugins: finding the entry points of the ``mtd`` group, calling a plugin's hooks once and checking what
they return, so that a broken plugin becomes records naming it instead of an exception (mtd_core/plugins/registry.py
keeps what passes)."""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import traceback
from collections.abc import Iterable, Mapping
from typing import Protocol, TypeAlias

import pluggy

from mtd_core.errors import closest
from mtd_core.modality import Modality, Role
from mtd_core.plugins.hookspecs import hookimpl
from mtd_core.plugins.records import (
    BLOCK_ENV,
    EXPECTED,
    HOOKS,
    PluginInfo,
    PluginRecord,
    Provision,
    record,
)

ENTRY_POINT_GROUP = "mtd"

_Item: TypeAlias = tuple[str, object, tuple[str, ...]]
"""A valid item of a hook's result: (name, the registered object, its roles)."""


class EntryPointLike(Protocol):
    """What the registry needs from an entry point (``importlib.metadata.EntryPoint`` satisfies it).

    ``dist`` (the providing distribution, with ``name`` and ``version``) is read if present.
    """

    name: str
    value: str

    def load(self) -> object:
        """Import and return the object the entry point names."""


def discover_entry_points(group: str = ENTRY_POINT_GROUP) -> list[EntryPointLike]:
    """The installed entry points of ``group``, sorted by name then distribution.

    The registry calls this (through the module attribute, so tests can monkeypatch it) when it loads.
    """
    eps = list(importlib.metadata.entry_points(group=group))
    return sorted(eps, key=lambda ep: (ep.name, dist_of(ep)[0] or ""))


def dist_of(ep: object) -> tuple[str | None, str | None]:
    """(distribution name, version) of an entry point, or (None, None) when it carries no distribution."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    try:
        name = dist.name if hasattr(dist, "name") else dist.metadata["Name"]
        return (str(name) if name else None), (str(dist.version) if dist.version else None)
    except Exception:  # a malformed METADATA file must not break listing
        return None, None


def blocked_from_env() -> tuple[str, ...]:
    """The plugin names listed in ``MTD_BLOCK_PLUGINS`` (comma-separated; blanks ignored)."""
    return tuple(s.strip() for s in os.environ.get(BLOCK_ENV, "").split(",") if s.strip())


class ClassPlugin:
    """Wraps a Modality subclass given directly to :meth:`Registry.register` as a one-hook plugin."""

    def __init__(self, cls: type[Modality]) -> None:
        self.cls = cls

    @hookimpl
    def mtd_register_modalities(self) -> list[type[Modality]]:
        """The wrapped class."""
        return [self.cls]


def qualname(obj: object) -> str:
    """``module.QualName`` for classes and functions, the module name for modules, else the repr."""
    if inspect.ismodule(obj):
        return obj.__name__
    if isinstance(obj, ClassPlugin):
        obj = obj.cls
    if not hasattr(obj, "__qualname__"):  # an instance: name its class
        obj = type(obj)
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if mod and qual:
        return f"{mod}.{qual}"
    return repr(obj)


# Frames that belong to the import machinery, not to the plugin: skipped when locating an error.
_HERE = os.path.dirname(__file__) + os.sep  # the registry's own frames
_NOT_PLUGIN_CODE = ("<frozen", os.path.dirname(importlib.metadata.__file__).rsplit(os.sep, 1)[0] + os.sep)


def format_exception(e: BaseException) -> tuple[str, str]:
    """(``Type: message (at file:line)``, full traceback) for an exception raised by plugin code."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not f.filename.startswith(_NOT_PLUGIN_CODE) and not f.filename.startswith(_HERE)]
    where = f"\n(at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {e}{where}", "".join(traceback.format_exception(type(e), e, e.__traceback__))


def collect(pm: pluggy.PluginManager, obj: object, info: PluginInfo) -> tuple[list[Provision], list[PluginRecord]]:
    """Register ``obj`` with pluggy, call each of its hooks once and validate the results.

    On any problem the plugin is unregistered again and nothing it provides is kept.
    """
    problems: list[PluginRecord] = []

    def fail(error: str, tb: str | None = None, name: str | None = None, what: str = "plugin") -> None:
        problems.append(record(info, what, name or info.name, "failed", error, tb))

    implemented = []
    for attr in dir(obj):
        try:
            opts = pm.parse_hookimpl_opts(obj, attr)
        except Exception:  # an attribute that cannot be inspected is not a hook
            opts = None
        if opts is None:
            continue
        if attr in HOOKS.values():
            implemented.append(attr)
        else:
            fail(f"it implements {attr!r}, which is not an mtd hook{closest(attr, list(HOOKS.values()))}; "
                 f"the hooks are {sorted(HOOKS.values())}")
    if not problems and not implemented:
        plain = [a for a in HOOKS.values() if callable(getattr(obj, a, None))]
        hint = (f"; {plain} {'is' if len(plain) == 1 else 'are'} not decorated with "
                "@mtd_core.plugins.hookimpl" if plain else f"; the hooks are {sorted(HOOKS.values())}")
        fail(f"{info.source} implements no mtd hook{hint}")
    if problems:
        return [], problems
    try:
        pm.register(obj, name=info.name)
    except Exception as e:  # pluggy: a hook with arguments the spec lacks, or the same object registered twice
        fail(f"pluggy refused to register it: {type(e).__name__}: {e}")
        return [], problems
    provisions: list[Provision] = []
    for what, hook in HOOKS.items():
        for impl in getattr(pm.hook, hook).get_hookimpls():
            if impl.plugin is not obj:
                continue
            if impl.hookwrapper or impl.wrapper:
                fail(f"{hook} is declared as a hook wrapper; mtd hooks are plain functions returning "
                     f"{EXPECTED[what]}")
                continue
            try:
                result = impl.function()
            except (Exception, SystemExit) as e:
                msg, tb = format_exception(e)
                fail(f"its hook {hook}() raised {msg}", tb)
                continue
            items, errors = validate_result(what, hook, result)
            for name, error in errors:
                fail(error, name=name, what=what if name else "plugin")
            provisions += [Provision(what, name, value, info, roles) for name, value, roles in items]
    if problems:
        pm.unregister(obj)
        return [], problems
    return provisions, []


def validate_result(what: str, hook: str, result: object) -> tuple[list[_Item], list[tuple[str | None, str]]]:
    """Check one hook result. Returns (valid items as (name, obj, roles), problems as (item name or None, text))."""
    expected = EXPECTED[what]
    if result is None:
        return [], [(None, f"its hook {hook}() returned None; expected {expected} (is a `return` missing?)")]
    if what == "modality":
        if isinstance(result, (str, bytes, Mapping)) or not isinstance(result, Iterable):
            return [], [(None, f"its hook {hook}() returned a {type(result).__name__}; expected {expected}")]
        return validate_modalities(hook, list(result))
    if not isinstance(result, Mapping):
        return [], [(None, f"its hook {hook}() returned a {type(result).__name__}; expected {expected}")]
    items: list[_Item] = []
    problems: list[tuple[str | None, str]] = []
    for key, value in result.items():
        if not isinstance(key, str) or not key:
            problems.append((None, f"its hook {hook}() returned the key {key!r}; {what} names must be non-empty str"))
        elif not callable(value):
            problems.append((key, f"its hook {hook}() maps {key!r} to {value!r} ({type(value).__name__}), which is "
                                  f"not callable; expected {expected}"))
        else:
            items.append((key, value, ()))
    return items, problems


def validate_modalities(hook: str, classes: list[object]) -> tuple[list[_Item], list[tuple[str | None, str]]]:
    """Each item must be a concrete Modality subclass with a non-empty str ``kind`` and valid ``roles``."""
    items: list[_Item] = []
    problems: list[tuple[str | None, str]] = []
    seen: dict[str, type[Modality]] = {}
    for cls in classes:
        label = qualname(cls)
        if not isinstance(cls, type):
            hint = " (return the class, not an instance)" if isinstance(cls, Modality) else ""
            problems.append((None, f"its hook {hook}() returned {cls!r}, a {type(cls).__name__}; expected a "
                                   f"Modality subclass{hint}"))
            continue
        if not issubclass(cls, Modality):
            problems.append((None, f"its hook {hook}() returned the class {label}, which does not subclass "
                                   "mtd_core.modality.Modality"))
            continue
        kind = getattr(cls, "kind", None)
        if not isinstance(kind, str) or not kind:
            problems.append((None, f"{label} (returned by {hook}()) must set the class attribute `kind` to a "
                                   f"non-empty str, got {kind!r}"))
            continue
        if inspect.isabstract(cls):
            missing = sorted(getattr(cls, "__abstractmethods__", ()))
            problems.append((kind, f"{label} (kind {kind!r}) is abstract: it does not implement {missing}"))
            continue
        try:
            roles = tuple(Role(r).value for r in cls.roles)
            if not roles:
                raise ValueError("no roles")
        except (TypeError, ValueError):
            problems.append((kind, f"{label} (kind {kind!r}): `roles` must be a non-empty tuple of Role values "
                                   f"('base', 'aggregated'), got {getattr(cls, 'roles', None)!r}"))
            continue
        if kind in seen and seen[kind] is not cls:
            problems.append((kind, f"its hook {hook}() returned two classes of kind {kind!r}: "
                                   f"{qualname(seen[kind])} and {label}"))
            continue
        if kind not in seen:
            seen[kind] = cls
            items.append((kind, cls, roles))
    return items, problems
