"""The mtd pytest plugin (entry point ``pytest11 = mtd``): registry fixtures for plugin authors and mtd's tests.

Installed with mtd, so any project's tests can use the fixtures without a conftest:

    mtd_registry            a fresh, isolated Registry without entry points (register your plugin explicitly)
    mtd_registry_builtin    a fresh Registry loaded from the installed ``mtd`` entry points (built-ins and
                            any third-party plugins in the environment)

Both are function-scoped: what one test registers never leaks into another. This module imports nothing heavy
(the registry is imported when a fixture is first used), because pytest loads it in every session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mtd_core.plugins.registry import Registry


@pytest.fixture
def mtd_registry() -> Registry:
    """A new Registry with no plugins loaded; entry points are not scanned and ``MTD_BLOCK_PLUGINS`` is ignored.

    Register what the test needs with ``mtd_registry.register(module_or_object)``.
    """
    from mtd_core.plugins.registry import Registry

    return Registry(entry_points=False, blocked=())


@pytest.fixture
def mtd_registry_builtin() -> Registry:
    """A new Registry loaded from the installed ``mtd`` entry points, independent of the process-wide one.

    ``MTD_BLOCK_PLUGINS`` is honoured as in normal use.
    """
    from mtd_core.plugins.registry import Registry

    return Registry(entry_points=True)
