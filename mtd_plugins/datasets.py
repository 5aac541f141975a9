"""The built-in datasets, registered through the same hook a third-party plugin uses.

Factories take keyword options (the ``[dataset]`` table minus name/keys/transforms) and return
:class:`mtd_core.data.DatasetSplits`. None downloads anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mtd_core.plugins import hookimpl

if TYPE_CHECKING:
    from mtd_core.data import DatasetSplits


@hookimpl
def mtd_register_datasets() -> dict[str, Callable[..., DatasetSplits]]:
    """digits (scikit-learn, ships in its wheel), fashion_mnist (local IDX files), npz and png_folder (user data),
    packed (a folder written by ``mtd data pack``, read from its .npy shards batch by batch)."""
    from mtd_core.data import load_digits, load_fashion_mnist, load_npz, load_png_folder
    from mtd_core.data.packed import load_packed

    return {"digits": load_digits, "fashion_mnist": load_fashion_mnist, "npz": load_npz,
            "png_folder": load_png_folder, "packed": load_packed}
