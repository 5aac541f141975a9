"""The plugin registry: discovery through the ``mtd`` entry-point group, explicit registration, failure isolation.

A :class:`Registry` owns a pluggy ``PluginManager`` for the project ``mtd`` with the hooks of
:mod:`mtd_core.plugins.hookspecs`. It loads every entry point of the group ``mtd`` itself (not through pluggy's
``load_setuptools_entrypoints``) so that one broken plugin cannot stop the others: a plugin whose import fails,
whose hook raises, or whose hook returns something invalid is recorded with its name, distribution and the error,
and skipped. Two plugins providing the same name is also an error: both are recorded as failed and neither is
registered under that name (asking for it raises a :class:`PluginError` naming both distributions), unless one of
them is a built-in, which keeps the name while the newcomer is recorded as failed for it. What is recorded lives in
records.py, how a plugin is loaded and checked in loading.py.

Every registered thing and every problem is a :class:`PluginRecord` (``registry.records``); ``mtd plugins list``
prints them. ``MTD_BLOCK_PLUGINS`` (comma-separated entry-point or distribution names) blocks plugins.

Loading is lazy: constructing a Registry imports no plugin; the first query does. Nothing here builds a model.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

from mtd_core.errors import ConfigError, PluginError, closest
from mtd_core.modality import Modality
from mtd_core.plugins import hookspecs
from mtd_core.plugins.loading import (
    ENTRY_POINT_GROUP,
    ClassPlugin,
    EntryPointLike,
    blocked_from_env,
    collect,
    discover_entry_points,
    dist_of,
    format_exception,
    qualname,
)
from mtd_core.plugins.records import (
    BLOCK_ENV,
    BUILTIN_DISTRIBUTION,
    HOOKS,
    ORDER,
    PLURAL,
    PluginInfo,
    PluginRecord,
    Provision,
    clash_message,
    indent,
    record,
    shadowed_message,
)
from mtd_core.types import ConfigMapping, Factory

if TYPE_CHECKING:
    from mtd_core.data.splits import DatasetSplits
    from mtd_core.sampling.base import Sampler

__all__ = ["BLOCK_ENV", "BUILTIN_DISTRIBUTION", "ENTRY_POINT_GROUP", "HOOKS", "PluginInfo", "PluginRecord", "Registry",
           "discover_entry_points", "get_registry", "reset_registry"]

logger = logging.getLogger("mtd.plugins")


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
        self._provisions: list[Provision] = []
        self._problems: list[PluginRecord] = []
        self._tables: dict[str, dict[str, object]] = {what: {} for what in HOOKS}
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
                dist, version = dist_of(ep)
                info = PluginInfo(ep.name, str(ep.value), dist, version)
                hit = {n for n in (ep.name, dist) if n is not None} & set(blocked)
                if hit:
                    matched |= hit
                    self._problems.append(record(info, "plugin", info.name, "blocked"))
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
            self._problems.append(record(info, "plugin", info.name, "failed",
                                               f"the plugin name {info.name!r} is already taken by {other.describe()}; "
                                               "entry-point names in the group 'mtd' must be unique"))
            return
        self._infos[info.name] = info
        try:
            obj = ep.load()
        except (Exception, SystemExit) as e:  # a plugin calling sys.exit() must not end the program
            msg, tb = format_exception(e)
            self._problems.append(record(info, "plugin", info.name, "failed",
                                               f"importing {info.source} raised {msg}", tb))
            return
        if isinstance(obj, type) and issubclass(obj, Modality):  # "pkg.module:SomeModality" names a class directly
            obj = ClassPlugin(obj)
        provisions, problems = collect(self.pm, obj, info)
        if problems:
            self._problems.extend(problems)
        else:
            self._provisions.extend(provisions)

    def _resolve(self) -> None:
        """Rebuild the lookup tables from the provisions. A name two plugins provide is registered under none of
        them, unless one is a built-in: the built-in keeps it (so `mtd demo` survives any installed plugin) and
        each newcomer is reported as failed for that name."""
        groups: dict[tuple[str, str], list[Provision]] = defaultdict(list)
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

    # -- explicit registration --------------------------------------------------------------------
    def register(self, obj: object, name: str | None = None) -> str:
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
                obj = ClassPlugin(obj)
            name = name or qualname(obj)
            info = PluginInfo(name, qualname(obj))
            if self.pm.has_plugin(name):
                raise PluginError(f"cannot register {qualname(obj)} as plugin {name!r}: that plugin name is already "
                                  f"registered ({self._info_of(name).describe()}); unregister it first or pass "
                                  "another name=")
            if self.pm.is_registered(obj):
                raise PluginError(f"{qualname(obj)} is already registered as plugin {self.pm.get_name(obj)!r}")
            provisions, problems = collect(self.pm, obj, info)
            if problems:
                raise PluginError(f"cannot register {info.describe()}:\n"
                                  + "\n".join(indent(p.error or "") for p in problems))
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
                error = None if infos is None else clash_message(p.what, p.name, infos)
                kept = self._shadowed.get((p.what, p.name))
                if kept is not None and kept != p.info:
                    error = shadowed_message(p.what, p.name, p.info, kept)
                out.append(record(p.info, p.what, p.name, "ok" if error is None else "failed", error,
                                        roles=p.roles))
        return sorted(out, key=lambda r: (ORDER[r.what], r.name, r.plugin))

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

    def get(self, what: str, name: str) -> Any:  # Any: its type depends on `what`; the typed getters below say it
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
            raise PluginError(clash_message(what, name, infos))
        lines = [f"unknown {what} {name!r}{closest(name, known)}; known {PLURAL[what]}: {known}"]
        related = [r for r in self._problems if r.status != "ok" and (r.what in (what, "plugin"))]
        if related:
            lines.append("note: these plugins did not load (one may provide it):")
            lines += [indent(r.message()) for r in related]
        raise ConfigError("\n".join(lines))

    def table(self, what: str) -> dict[str, Any]:  # Any: as for get(); the caller knows which table it reads
        """Everything registered for ``what``, by name (a copy): the kinds a schedule or transform config may name."""
        self.names(what)  # checks ``what`` and loads
        with self._lock:
            return dict(self._tables[what])

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

    def build_modality(self, config: ConfigMapping) -> Modality:
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

    def dataset(self, name: str) -> Callable[..., DatasetSplits]:
        """The dataset factory registered under ``name`` (see :meth:`get` for the errors)."""
        return self.get("dataset", name)

    def backbone(self, name: str) -> Factory:
        """The backbone factory registered under ``name`` (see :meth:`get` for the errors)."""
        return self.get("backbone", name)

    def metric(self, name: str) -> Callable[..., Mapping[str, float]]:
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
        counts = ", ".join(f"{len(self._tables[w])} {PLURAL[w]}" for w in HOOKS)
        return f"Registry({counts}, {len(self.failures)} failures)"


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
