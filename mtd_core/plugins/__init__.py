"""Plugins: hook specifications, the registry, validation and the conformance kit."""

from mtd_core.plugins.hookspecs import hookimpl, hookspec
from mtd_core.plugins.registry import PluginRecord, Registry, get_registry, reset_registry

__all__ = ["PluginRecord", "Registry", "get_registry", "hookimpl", "hookspec", "reset_registry"]
