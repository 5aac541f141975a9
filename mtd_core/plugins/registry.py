"""The plugin registry: discovery through the ``mtd`` entry-point group, explicit registration, failure isolation.

A :class:`Registry` owns a pluggy ``PluginManager`` for the project ``mtd`` with the hooks of
:mod:`mtd_core.plugins.hookspecs`. It loads every entry point of the group ``mtd`` itself (not through pluggy's
``load_setuptools_entrypoints``) so that one broken plugin cannot stop the others: a plugin whose import fails,
whose hook raises, or whose hook returns something invalid is recorded with its name, distribution and the error,
and skipped. Two plugins providing the same name is also an error: both are recorded as failed and neither is
registered under that name (asking for it raises a :class:`PluginError` naming both distributions).

Every registered thing and every problem is a :class:`PluginRecord` (``registry.records``); ``mtd plugins list``
prints them. ``MTD_BLOCK_PLUGINS`` (comma-separated entry-point or distribution names) blocks plugins.

Loading is lazy: constructing a Registry imports no plugin; the first query does. Nothing here builds a model.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import os
import threading
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

import attrs
import pluggy

from mtd_core.errors import ConfigError, PluginError, closest
from mtd_core.modality import Modality, Role
from mtd_core.plugins import hookspecs
from mtd_core.plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from mtd_core.sampling.base import Sampler

logger = logging.getLogger("mtd.plugins")

ENTRY_POINT_GROUP = "mtd"
BLOCK_ENV = "MTD_BLOCK_PLUGINS"

What = Literal["modality", "dataset", "backbone", "metric", "sampler", "plugin"]
Status = Literal["ok", "failed", "blocked"]

# The kind of thing each hook registers, in listing order. "plugin" (records about a whole plugin: import
# failures, raising hooks, blocked plugins) is not a hook and sorts last.
HOOKS: dict[str, str] = {
    "modality": "mtd_register_modalities",
    "dataset": "mtd_register_datasets",
    "backbone": "mtd_register_backbones",
    "metric": "mtd_register_metrics",
    "sampler": "mtd_register_samplers",
}
_ORDER = {**{what: i for i, what in enumerate(HOOKS)}, "plugin": len(HOOKS)}
_EXPECTED = {
    "modality": "a list of concrete Modality subclasses",
    "dataset": "a mapping of dataset names (str) to factories (callables)",
    "backbone": "a mapping of backbone names (str) to factories (callables)",
    "metric": "a mapping of metric names (str) to metrics (callables)",
    "sampler": "a mapping of sampler names (str) to Sampler specs or sampler functions (callables)",
}


class EntryPointLike(Protocol):
    """What the registry needs from an entry point (``importlib.metadata.EntryPoint`` satisfies it).

    ``dist`` (the providing distribution, with ``name`` and ``version``) is read if present.
    """

    name: str
    value: str

    def load(self) -> Any:
        """Import and return the object the entry point names."""


def discover_entry_points(group: str = ENTRY_POINT_GROUP) -> list[EntryPointLike]:
    """The installed entry points of ``group``, sorted by name then distribution.

    The registry calls this (through the module attribute, so tests can monkeypatch it) when it loads.
    """
    eps = list(importlib.metadata.entry_points(group=group))
    return sorted(eps, key=lambda ep: (ep.name, _dist_of(ep)[0] or ""))


def _dist_of(ep: Any) -> tuple[str | None, str | None]:
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


BUILTIN_DISTRIBUTION = "mtd"
"""The distribution whose entry points are the built-ins: a name one of them provides stays theirs in a clash."""


@attrs.frozen
class PluginInfo:
    """Where a plugin comes from.

    Args:
        name: the plugin name (the entry point's name, or the name given to :meth:`Registry.register`).
        source: the entry point's value ("package.module") or the registered object's qualified name.
        distribution: the installed distribution providing the entry point; None for explicit registration.
        version: that distribution's version; None for explicit registration.
    """

    name: str
    source: str
    distribution: str | None = None
    version: str | None = None

    @property
    def builtin(self) -> bool:
        """Shipped with mtd itself (an entry point of the ``mtd`` distribution)."""
        return self.distribution == BUILTIN_DISTRIBUTION

    def describe(self) -> str:
        """``plugin 'x' (distribution d 1.0, entry point x = pkg.mod)`` or ``... (registered explicitly: obj)``."""
        if self.distribution is None:
            return f"plugin {self.name!r} (registered explicitly: {self.source})"
        ver = f" {self.version}" if self.version else ""
        return f"plugin {self.name!r} (distribution {self.distribution}{ver}, entry point {self.name} = {self.source})"


@attrs.frozen
class PluginRecord:
    """One line of ``mtd plugins list``: a registered thing, or a problem with a plugin.

    Args:
        name: the registered name (a modality kind, a dataset/backbone/metric name), or the plugin name when
            the record is about a whole plugin (``what == "plugin"``).
        what: "modality", "dataset", "backbone", "metric", or "plugin".
        plugin: the plugin (entry-point) name that provided it.
        distribution: the providing distribution's name; None for explicit registration.
        version: the providing distribution's version; None for explicit registration.
        status: "ok" (registered and usable), "failed" (not registered; see ``error``) or "blocked"
            (not loaded because ``MTD_BLOCK_PLUGINS`` names it).
        error: a one-paragraph description of the problem; None when ``status`` is "ok".
        roles: the roles a modality supports ("base", "aggregated"); empty for other things.
        source: the entry point's value or the registered object's qualified name.
        traceback: the formatted traceback when the problem was an exception, else None.
    """

    name: str
    what: What
    plugin: str
    distribution: str | None
    version: str | None
    status: Status
    error: str | None = None
    roles: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    source: str | None = None
    traceback: str | None = attrs.field(default=None, repr=False)

    def message(self) -> str:
        """A multi-line, self-contained description naming the thing, the plugin, its distribution and the error."""
        info = PluginInfo(self.plugin, self.source or "?", self.distribution, self.version).describe()
        subject = info if self.what == "plugin" else f"{self.what} {self.name!r} from {info}"
        if self.status == "ok":
            return f"{subject}: ok"
        if self.status == "blocked":
            return f"{subject}: blocked by {BLOCK_ENV}"
        body = "\n".join("    " + line for line in (self.error or "").splitlines())
        return f"{subject} failed:\n{body}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-representable dict (the ``--json`` form of ``mtd plugins list``)."""
        out = attrs.asdict(self)
        out["roles"] = list(self.roles)
        return out


@attrs.frozen
class _Provision:
    """Something a plugin's hook returned that passed validation: ``obj`` under ``(what, name)``."""

    what: str
    name: str
    obj: Any
    info: PluginInfo
    roles: tuple[str, ...] = ()


class _ClassPlugin:
    """Wraps a Modality subclass given directly to :meth:`Registry.register` as a one-hook plugin."""

    def __init__(self, cls: type[Modality]) -> None:
        self.cls = cls

    @hookimpl
    def mtd_register_modalities(self) -> list[type[Modality]]:
        """The wrapped class."""
        return [self.cls]


def _qualname(obj: Any) -> str:
    """``module.QualName`` for classes and functions, the module name for modules, else the repr."""
    if inspect.ismodule(obj):
        return obj.__name__
    if isinstance(obj, _ClassPlugin):
        obj = obj.cls
    if not hasattr(obj, "__qualname__"):  # an instance: name its class
        obj = type(obj)
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if mod and qual:
        return f"{mod}.{qual}"
    return repr(obj)


# Frames that belong to the import machinery, not to the plugin: skipped when locating an error.
_NOT_PLUGIN_CODE = ("<frozen", os.path.dirname(importlib.metadata.__file__).rsplit(os.sep, 1)[0] + os.sep)


def _format_exception(e: BaseException) -> tuple[str, str]:
    """(``Type: message (at file:line)``, full traceback) for an exception raised by plugin code."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not f.filename.startswith(_NOT_PLUGIN_CODE) and f.filename != __file__]
    where = f"\n(at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {e}{where}", "".join(traceback.format_exception(type(e), e, e.__traceback__))


class Registry:
    """The set of installed (and explicitly registered) plugins and what they provide.

    Args:
        entry_points: True to load the installed entry points of the group ``mtd`` (found with
            :func:`discover_entry_points`), False for none (an isolated registry for tests and notebooks), or
            an explicit iterable of entry-point-like objects.
        blocked: entry-point or distribution names not to load; None reads ``MTD_BLOCK_PLUGINS``.

    Entry points are loaded lazily, on the first query or registration. Problems never raise during loading;
    they become ``failed`` records (see :attr:`failures`). Asking for a name that is unknown raises
    :class:`ConfigError` (listing the known names and the nearest one); a name two plugins provide raises
    :class:`PluginError` naming both.
    """

    def __init__(self, entry_points: bool | Iterable[EntryPointLike] = True,
                 blocked: Iterable[str] | None = None) -> None:
        self._entry_points = entry_points if isinstance(entry_points, bool) else list(entry_points)
        self._blocked_arg = None if blocked is None else tuple(blocked)
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._lock = threading.RLock()
        self._loaded = False
        self._provisions: list[_Provision] = []
        self._problems: list[PluginRecord] = []
        self._tables: dict[str, dict[str, Any]] = {what: {} for what in HOOKS}
        self._conflicts: dict[tuple[str, str], list[PluginInfo]] = {}
        self._shadowed: dict[tuple[str, str], PluginInfo] = {}  # (what, name) -> the built-in that keeps it
        self._blocked_unmatched: list[str] = []
        self._infos: dict[str, PluginInfo] = {}  # every plugin that was loaded or tried, by plugin name

    # -- loading ----------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the entry points now (idempotent; every query does this on first use)."""
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            if self._entry_points is False:
                return
            eps = discover_entry_points() if self._entry_points is True else self._entry_points
            blocked = self._blocked_arg if self._blocked_arg is not None else blocked_from_env()
            matched: set[str] = set()
            for ep in eps:
                dist, version = _dist_of(ep)
                info = PluginInfo(ep.name, str(ep.value), dist, version)
                hit = {n for n in (ep.name, dist) if n is not None} & set(blocked)
                if hit:
                    matched |= hit
                    self._problems.append(self._record(info, "plugin", info.name, "blocked"))
                    continue
                self._load_entry_point(ep, info)
            self._blocked_unmatched = [b for b in blocked if b not in matched]
            for name in self._blocked_unmatched:
                logger.warning("%s names %r, but no installed mtd plugin or distribution has that name", BLOCK_ENV, name)
            self._resolve()
            for rec in self.failures:
                logger.warning("%s", rec.message())

    def _load_entry_point(self, ep: EntryPointLike, info: PluginInfo) -> None:
        """Import one entry point and take what its hooks provide; record every problem instead of raising."""
        if info.name in self._infos:
            other = self._infos[info.name]
            self._problems.append(self._record(info, "plugin", info.name, "failed",
                                               f"the plugin name {info.name!r} is already taken by {other.describe()}; "
                                               "entry-point names in the group 'mtd' must be unique"))
            return
        self._infos[info.name] = info
        try:
            obj = ep.load()
        except (Exception, SystemExit) as e:  # a plugin calling sys.exit() must not end the program
            msg, tb = _format_exception(e)
            self._problems.append(self._record(info, "plugin", info.name, "failed",
                                               f"importing {info.source} raised {msg}", tb))
            return
        if isinstance(obj, type) and issubclass(obj, Modality):  # "pkg.module:SomeModality" names a class directly
            obj = _ClassPlugin(obj)
        provisions, problems = self._collect(obj, info)
        if problems:
            self._problems.extend(problems)
        else:
            self._provisions.extend(provisions)

    def _collect(self, obj: Any, info: PluginInfo) -> tuple[list[_Provision], list[PluginRecord]]:
        """Register ``obj`` with pluggy, call each of its hooks once and validate the results.

        On any problem the plugin is unregistered again and nothing it provides is kept.
        """
        problems: list[PluginRecord] = []

        def fail(error: str, tb: str | None = None, name: str | None = None, what: str = "plugin") -> None:
            problems.append(self._record(info, what, name or info.name, "failed", error, tb))

        implemented = []
        for attr in dir(obj):
            try:
                opts = self.pm.parse_hookimpl_opts(obj, attr)
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
            self.pm.register(obj, name=info.name)
        except Exception as e:  # pluggy: a hook with arguments the spec lacks, or the same object registered twice
            fail(f"pluggy refused to register it: {type(e).__name__}: {e}")
            return [], problems
        provisions: list[_Provision] = []
        for what, hook in HOOKS.items():
            for impl in getattr(self.pm.hook, hook).get_hookimpls():
                if impl.plugin is not obj:
                    continue
                if impl.hookwrapper or impl.wrapper:
                    fail(f"{hook} is declared as a hook wrapper; mtd hooks are plain functions returning "
                         f"{_EXPECTED[what]}")
                    continue
                try:
                    result = impl.function()
                except (Exception, SystemExit) as e:
                    msg, tb = _format_exception(e)
                    fail(f"its hook {hook}() raised {msg}", tb)
                    continue
                items, errors = _validate_result(what, hook, result)
                for name, error in errors:
                    fail(error, name=name, what=what if name else "plugin")
                provisions += [_Provision(what, name, value, info, roles) for name, value, roles in items]
        if problems:
            self.pm.unregister(obj)
            return [], problems
        return provisions, []

    def _resolve(self) -> None:
        """Rebuild the lookup tables from the provisions. A name two plugins provide is registered under none of
        them, unless one is a built-in: the built-in keeps it (so `mtd demo` survives any installed plugin) and
        each newcomer is reported as failed for that name."""
        groups: dict[tuple[str, str], list[_Provision]] = defaultdict(list)
        for p in self._provisions:
            groups[(p.what, p.name)].append(p)
        self._tables = {what: {} for what in HOOKS}
        self._conflicts = {}
        self._shadowed = {}
        for (what, name), provs in groups.items():
            builtins = [p for p in provs if p.info.builtin]
            if len(provs) == 1 or len(builtins) == 1:
                kept = provs[0] if len(provs) == 1 else builtins[0]
                self._tables[what][name] = kept.obj
                if len(provs) > 1:
                    self._shadowed[(what, name)] = kept.info
            else:
                self._conflicts[(what, name)] = [p.info for p in provs]

    def _record(self, info: PluginInfo, what: str, name: str, status: str, error: str | None = None,
                tb: str | None = None, roles: tuple[str, ...] = ()) -> PluginRecord:
        return PluginRecord(name=name, what=what, plugin=info.name, distribution=info.distribution,  # type: ignore[arg-type]
                            version=info.version, status=status, error=error, roles=roles,  # type: ignore[arg-type]
                            source=info.source, traceback=tb)

    # -- explicit registration --------------------------------------------------------------------
    def register(self, obj: Any, name: str | None = None) -> str:
        """Register a plugin object or module (with ``@hookimpl`` functions), or a Modality subclass directly.

        Meant for notebooks and tests; unlike entry-point loading it raises :class:`PluginError` on any problem
        (after undoing the registration), including a name that an already registered plugin provides.

        Args:
            obj: a module or object implementing mtd hooks, or a concrete ``Modality`` subclass.
            name: the plugin name (default: the module or class's qualified name).

        Returns:
            The plugin name, for :meth:`unregister`.
        """
        self.load()
        with self._lock:
            if isinstance(obj, type) and issubclass(obj, Modality):
                obj = _ClassPlugin(obj)
            name = name or _qualname(obj)
            info = PluginInfo(name, _qualname(obj))
            if self.pm.has_plugin(name):
                raise PluginError(f"cannot register {_qualname(obj)} as plugin {name!r}: that plugin name is already "
                                  f"registered ({self._info_of(name).describe()}); unregister it first or pass "
                                  "another name=")
            if self.pm.is_registered(obj):
                raise PluginError(f"{_qualname(obj)} is already registered as plugin {self.pm.get_name(obj)!r}")
            provisions, problems = self._collect(obj, info)
            if problems:
                raise PluginError(f"cannot register {info.describe()}:\n"
                                  + "\n".join(_indent(p.error or "") for p in problems))
            clashes = [(p, other) for p in provisions for other in self._provisions
                       if (other.what, other.name) == (p.what, p.name)]
            if clashes:
                self.pm.unregister(obj)
                raise PluginError(f"cannot register {info.describe()}:\n" + "\n".join(
                    f"    {p.what} {p.name!r} is already provided by {other.info.describe()}" for p, other in clashes))
            self._provisions.extend(provisions)
            self._infos[name] = info
            self._resolve()
            return name

    def unregister(self, name: str) -> None:
        """Remove a plugin and everything it provides (a name it clashed on becomes available to the other)."""
        self.load()
        with self._lock:
            plugin = self.pm.get_plugin(name)
            if plugin is None:
                raise PluginError(f"no plugin named {name!r} is registered{closest(name, self._plugin_names())}; "
                                  f"registered plugins: {sorted(self._plugin_names())}")
            self.pm.unregister(plugin)
            self._infos.pop(name, None)
            self._provisions = [p for p in self._provisions if p.info.name != name]
            self._resolve()

    def _plugin_names(self) -> list[str]:
        return [n for n, _ in self.pm.list_name_plugin() if n is not None]

    def _info_of(self, plugin: str) -> PluginInfo:
        return self._infos.get(plugin, PluginInfo(plugin, "?"))

    # -- queries ----------------------------------------------------------------------------------
    @property
    def records(self) -> list[PluginRecord]:
        """Every registered thing (status "ok"), every clash and every plugin problem, sorted by kind then name."""
        self.load()
        with self._lock:
            out = list(self._problems)
            for p in self._provisions:
                infos = self._conflicts.get((p.what, p.name))
                error = None if infos is None else _clash_message(p.what, p.name, infos)
                kept = self._shadowed.get((p.what, p.name))
                if kept is not None and kept != p.info:
                    error = _shadowed_message(p.what, p.name, p.info, kept)
                out.append(self._record(p.info, p.what, p.name, "ok" if error is None else "failed", error,
                                        roles=p.roles))
        return sorted(out, key=lambda r: (_ORDER[r.what], r.name, r.plugin))

    @property
    def failures(self) -> list[PluginRecord]:
        """The records with status "failed" (blocked plugins are not failures)."""
        return [r for r in self.records if r.status == "failed"]

    @property
    def blocked_unmatched(self) -> list[str]:
        """Names in the block list that match no installed plugin or distribution (probably typos)."""
        self.load()
        return list(self._blocked_unmatched)

    def names(self, what: str) -> list[str]:
        """The sorted names registered for ``what`` ("modality", "dataset", "backbone", "metric" or "sampler")."""
        if what not in HOOKS:
            raise ValueError(f"what must be one of {list(HOOKS)}, got {what!r}")
        self.load()
        return sorted(self._tables[what])

    def modality_kinds(self) -> list[str]:
        """The registered modality kinds."""
        return self.names("modality")

    def dataset_names(self) -> list[str]:
        """The registered dataset names."""
        return self.names("dataset")

    def backbone_names(self) -> list[str]:
        """The registered backbone names."""
        return self.names("backbone")

    def metric_names(self) -> list[str]:
        """The registered metric names."""
        return self.names("metric")

    def get(self, what: str, name: str) -> Any:
        """The object registered for ``what`` under ``name``.

        Raises:
            PluginError: two plugins provide ``name`` (the message names both distributions).
            ConfigError: nothing provides ``name``; lists the known names, the nearest one and any plugin that
                failed to load (it may be the one that would have provided it).
        """
        known = self.names(what)
        if not isinstance(name, str):
            raise ConfigError(f"a {what} name must be a str, got {type(name).__name__} {name!r}")
        if name in self._tables[what]:
            return self._tables[what][name]
        infos = self._conflicts.get((what, name))
        if infos:
            raise PluginError(_clash_message(what, name, infos))
        lines = [f"unknown {what} {name!r}{closest(name, known)}; known {_PLURAL[what]}: {known}"]
        related = [r for r in self._problems if r.status != "ok" and (r.what in (what, "plugin"))]
        if related:
            lines.append("note: these plugins did not load (one may provide it):")
            lines += [_indent(r.message()) for r in related]
        raise ConfigError("\n".join(lines))

    def provider(self, what: str, name: str) -> PluginInfo | None:
        """The plugin whose ``what`` is registered under ``name`` (None when nothing registered provides it)."""
        self.load()
        with self._lock:
            obj = self._tables.get(what, {}).get(name)
            return next((p.info for p in self._provisions if (p.what, p.name) == (what, name) and p.obj is obj),
                        None) if obj is not None else None

    def modality_class(self, kind: str) -> type[Modality]:
        """The Modality subclass registered under ``kind`` (see :meth:`get` for the errors)."""
        return self.get("modality", kind)

    def build_modality(self, config: Mapping[str, Any]) -> Modality:
        """Build a modality from its config dict (``Modality.to_config`` output): the ``kind`` key picks the class.

        Raises:
            ConfigError: ``config`` is not a mapping, has no ``kind``, or names an unknown kind (the message lists
                the known kinds and the nearest one); or the class rejects the options.
            PluginError: two plugins provide that kind.
        """
        if not isinstance(config, Mapping):
            raise ConfigError(f"a modality config must be a mapping with a 'kind' key, got {type(config).__name__}")
        if "kind" not in config:
            raise ConfigError(f"modality config {dict(config)!r} has no 'kind' key; "
                              f"expected one of {self.modality_kinds()}")
        return self.modality_class(config["kind"]).from_config(config)

    def dataset(self, name: str) -> Callable[..., Any]:
        """The dataset factory registered under ``name`` (see :meth:`get` for the errors)."""
        return self.get("dataset", name)

    def backbone(self, name: str) -> Callable[..., Any]:
        """The backbone factory registered under ``name`` (see :meth:`get` for the errors)."""
        return self.get("backbone", name)

    def metric(self, name: str) -> Callable[..., Any]:
        """The metric registered under ``name`` (see :meth:`get` for the errors)."""
        return self.get("metric", name)

    def sampler_names(self) -> list[str]:
        """The registered sampler names."""
        return self.names("sampler")

    def sampler(self, name: str) -> Sampler:
        """The sampler registered under ``name``, as a :class:`~mtd_core.sampling.base.Sampler` spec (a bare
        function is taken as one network evaluation per step; see :meth:`get` for the errors)."""
        from mtd_core.sampling.base import Sampler

        found = self.get("sampler", name)
        return found if isinstance(found, Sampler) else Sampler(fn=found)

    def __repr__(self) -> str:
        if not self._loaded:
            return "Registry(not loaded)"
        counts = ", ".join(f"{len(self._tables[w])} {_PLURAL[w]}" for w in HOOKS)
        return f"Registry({counts}, {len(self.failures)} failures)"


_PLURAL = {"modality": "modalities", "dataset": "datasets", "backbone": "backbones", "metric": "metrics",
           "sampler": "samplers"}


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _clash_message(what: str, name: str, infos: list[PluginInfo]) -> str:
    """Why a name two plugins provide is registered under neither, and what to do about it."""
    who = "\n".join(f"    {info.describe()}" for info in infos)
    return (f"{what} {name!r} is provided by {len(infos)} plugins, so it is registered for none of them:\n{who}\n"
            f"uninstall one of the distributions, or block one plugin with {BLOCK_ENV}={infos[-1].name}")


def _shadowed_message(what: str, name: str, newcomer: PluginInfo, builtin: PluginInfo) -> str:
    """Why a plugin's name is not registered for it: a built-in provides the same name and keeps it."""
    return (f"{what} {name!r} is already provided by the built-in {builtin.describe()}, which keeps it; this "
            f"{newcomer.describe()} is not used for it\nrename it in that plugin, or block the plugin with "
            f"{BLOCK_ENV}={newcomer.name}")


def _validate_result(what: str, hook: str, result: Any) -> tuple[list[tuple[str, Any, tuple[str, ...]]],
                                                                  list[tuple[str | None, str]]]:
    """Check one hook result. Returns (valid items as (name, obj, roles), problems as (item name or None, text))."""
    expected = _EXPECTED[what]
    if result is None:
        return [], [(None, f"its hook {hook}() returned None; expected {expected} (is a `return` missing?)")]
    if what == "modality":
        if isinstance(result, (str, bytes, Mapping)) or not isinstance(result, Iterable):
            return [], [(None, f"its hook {hook}() returned a {type(result).__name__}; expected {expected}")]
        return _validate_modalities(hook, list(result))
    if not isinstance(result, Mapping):
        return [], [(None, f"its hook {hook}() returned a {type(result).__name__}; expected {expected}")]
    items: list[tuple[str, Any, tuple[str, ...]]] = []
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


def _validate_modalities(hook: str, classes: list[Any]) -> tuple[list[tuple[str, Any, tuple[str, ...]]],
                                                                   list[tuple[str | None, str]]]:
    """Each item must be a concrete Modality subclass with a non-empty str ``kind`` and valid ``roles``."""
    items: list[tuple[str, Any, tuple[str, ...]]] = []
    problems: list[tuple[str | None, str]] = []
    seen: dict[str, Any] = {}
    for cls in classes:
        label = _qualname(cls)
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
                                   f"{_qualname(seen[kind])} and {label}"))
            continue
        if kind not in seen:
            seen[kind] = cls
            items.append((kind, cls, roles))
    return items, problems


_default: Registry | None = None
_default_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry of the installed plugins (created once; it loads on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Registry(entry_points=True)
        return _default


def reset_registry() -> None:
    """Forget the process-wide registry, so the next :func:`get_registry` rediscovers the entry points (tests)."""
    global _default
    with _default_lock:
        _default = None
