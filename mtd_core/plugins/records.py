"""What the plugin registry knows about each plugin: where it comes from (PluginInfo), each thing it registered or
each problem it had (PluginRecord), and the messages that explain a clash."""

from __future__ import annotations

from typing import Literal

import attrs

BLOCK_ENV = "MTD_BLOCK_PLUGINS"

What = Literal["modality", "dataset", "backbone", "metric", "sampler", "weight_schedule", "noise_schedule",
               "transform", "plugin"]
Status = Literal["ok", "failed", "blocked"]

# The kind of thing each hook registers, in listing order. "plugin" (records about a whole plugin: import
# failures, raising hooks, blocked plugins) is not a hook and sorts last.
HOOKS: dict[str, str] = {
    "modality": "mtd_register_modalities",
    "dataset": "mtd_register_datasets",
    "backbone": "mtd_register_backbones",
    "metric": "mtd_register_metrics",
    "sampler": "mtd_register_samplers",
    "weight_schedule": "mtd_register_weight_schedules",
    "noise_schedule": "mtd_register_noise_schedules",
    "transform": "mtd_register_transforms",
}
ORDER = {**{what: i for i, what in enumerate(HOOKS)}, "plugin": len(HOOKS)}
EXPECTED = {
    "modality": "a list of concrete Modality subclasses",
    "dataset": "a mapping of dataset names (str) to factories (callables)",
    "backbone": "a mapping of backbone names (str) to factories (callables)",
    "metric": "a mapping of metric names (str) to metrics (callables)",
    "sampler": "a mapping of sampler names (str) to Sampler specs or sampler functions (callables)",
    "weight_schedule": "a mapping of weight schedule kinds (str) to WeightSchedule classes (callables)",
    "noise_schedule": "a mapping of noise schedule kinds (str) to NoiseSchedule factories (callables)",
    "transform": "a mapping of transform kinds (str) to transform classes (callables)",
}


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

    def to_dict(self) -> dict[str, object]:
        """A JSON-representable dict (the ``--json`` form of ``mtd plugins list``)."""
        out = attrs.asdict(self)
        out["roles"] = list(self.roles)
        return out


@attrs.frozen
class Provision:
    """Something a plugin's hook returned that passed validation: ``obj`` under ``(what, name)``."""

    what: str
    name: str
    obj: object
    info: PluginInfo
    roles: tuple[str, ...] = ()


def record(info: PluginInfo, what: str, name: str, status: str, error: str | None = None, tb: str | None = None,
           roles: tuple[str, ...] = ()) -> PluginRecord:
    """A PluginRecord of ``info``'s plugin."""
    return PluginRecord(name=name, what=what, plugin=info.name, distribution=info.distribution,  # type: ignore[arg-type]
                        version=info.version, status=status, error=error, roles=roles,  # type: ignore[arg-type]
                        source=info.source, traceback=tb)


PLURAL = {"modality": "modalities", "dataset": "datasets", "backbone": "backbones", "metric": "metrics",
          "sampler": "samplers", "weight_schedule": "weight schedules", "noise_schedule": "noise schedules",
          "transform": "transforms"}


def indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def clash_message(what: str, name: str, infos: list[PluginInfo]) -> str:
    """Why a name two plugins provide is registered under neither, and what to do about it."""
    who = "\n".join(f"    {info.describe()}" for info in infos)
    return (f"{what} {name!r} is provided by {len(infos)} plugins, so it is registered for none of them:\n{who}\n"
            f"uninstall one of the distributions, or block one plugin with {BLOCK_ENV}={infos[-1].name}")


def shadowed_message(what: str, name: str, newcomer: PluginInfo, builtin: PluginInfo) -> str:
    """Why a plugin's name is not registered for it: a built-in provides the same name and keeps it."""
    return (f"{what} {name!r} is already provided by the built-in {builtin.describe()}, which keeps it; this "
            f"{newcomer.describe()} is not used for it\nrename it in that plugin, or block the plugin with "
            f"{BLOCK_ENV}={newcomer.name}")
