"""Plugins: hook specifications, the registry, validation and the conformance kit."""

from mtd_core.plugins.hookspecs import hookimpl, hookspec

__all__ = ["hookimpl", "hookspec"]
