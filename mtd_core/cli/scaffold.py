"""``mtd plugins new NAME``: write a plugin package that installs, validates and passes its conformance kit as is.

The package is the smallest complete modality plugin (docs/plugins.md): a pyproject declaring the entry point, a
modality holding one number in [-1, 1] per example with a Gaussian head, and a conformance test. Its author then
replaces the data, encoder, head and loss with their own and keeps the tests passing.
"""

from __future__ import annotations

import re
from pathlib import Path

from mtd_core.errors import ConfigError

NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "The {kind!r} modality for mtd"
requires-python = ">=3.10"
dependencies = ["mtd>=0.1"]

[project.optional-dependencies]
test = ["pytest>=7.4", "hypothesis>=6.80"]

# mtd finds plugins through this entry-point group; the entry-point name is the plugin's name in
# `mtd plugins list` (and what MTD_BLOCK_PLUGINS={dist} blocks).
[project.entry-points.mtd]
{dist} = "{package}"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

INIT = '''"""The mtd plugin {dist}: registers the {kind!r} modality."""

from mtd_core.plugins import hookimpl
from {package}.modality import {cls}

__all__ = ["{cls}"]


@hookimpl
def mtd_register_modalities() -> list[type]:
    return [{cls}]
'''

MODALITY = '''"""The {kind!r} modality: one number in [-1, 1] per example (replace it with your own data).

    data     float32 of shape (B,) in [-1, 1] (data_spec)
    encoder  a learned linear map of the number into Z, float32 like everything the networks return
    head     an MLP on the backbone's pooled features predicting the mean of a Gaussian
    loss     the Gaussian negative log-likelihood with std ``sigma``, in nats per example
    sample   the predicted mean (greedy) or a draw, clipped to [-1, 1]
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
from torch import nn

from mtd_core.modality import DataSpec, FeatureSpec, HeadInput, LatentSpec, Modality, Role
from mtd_core.plugins.validate import is_bool, positive_float, positive_int


@attrs.frozen
class {cls}Config:
    """Options of the {kind!r} modality (every value JSON-representable; each named here, validate checks it).

    Attributes:
        sigma: the std of the head's Gaussian likelihood.
        hidden: width of the head's hidden layer.
        normalize: scale the encoding to unit RMS, so that the weight schedule alone sets its strength.
    """

    sigma: float = attrs.field(default=0.1, validator=positive_float)
    hidden: int = attrs.field(default=64, validator=positive_int)
    normalize: bool = attrs.field(default=True, validator=is_bool)


class {cls}Encoder(nn.Module):
    """E(x) = x * u + v, reshaped to Z."""

    def __init__(self, latent: LatentSpec) -> None:
        super().__init__()
        self.shape = tuple(latent.shape)
        self.linear = nn.Linear(1, latent.numel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.unsqueeze(-1)).reshape(-1, *self.shape)


class {cls}(Modality):
    """One number in [-1, 1] per example; built as ``{cls}(name=..., role=..., **options)`` by the registry."""

    kind = "{kind}"
    roles = (Role.AGGREGATED,)
    head_input = HeadInput.POOLED
    Config = {cls}Config

    def data_spec(self) -> DataSpec:
        return DataSpec((), "float32", -1.0, 1.0)

    def build_encoder(self, latent: LatentSpec) -> nn.Module:
        return {cls}Encoder(latent)

    def build_head(self, latent: LatentSpec, features: FeatureSpec) -> nn.Module:
        return nn.Sequential(nn.Linear(features.pooled_dim, self.config.hidden), nn.SiLU(),
                             nn.Linear(self.config.hidden, 1), nn.Flatten(0))

    def loss(self, pred: Any, x: torch.Tensor) -> torch.Tensor:
        s = self.config.sigma
        return 0.5 * ((x - pred) / s) ** 2 + math.log(s) + 0.5 * math.log(2 * math.pi)

    def sample(self, pred: Any, *, greedy: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        mean = pred.detach()
        if not greedy:
            mean = mean + self.config.sigma * torch.randn(mean.shape, generator=generator, device=mean.device)
        return mean.clamp(-1.0, 1.0)
'''

TEST = '''"""{cls} passes mtd's conformance kit (every test is inherited from ModalityConformance)."""

from mtd_core.plugins.conformance import ModalityConformance
from mtd_core.plugins.registry import Registry
from {package} import {cls}


class Test{cls}Conformance(ModalityConformance):
    modality_class = {cls}
    options = {{"hidden": 16}}


def test_the_installed_registry_resolves_{kind}_to_this_class():
    """Installed (pip install -e .), kind "{kind}" is this class: a kind that another plugin or a built-in also
    registers fails here, with an error naming both distributions."""
    registry = Registry()
    problems = [r.message() for r in registry.failures if r.distribution == "{dist}"]
    assert not problems, "\\n".join(problems)
    assert registry.modality_class("{kind}") is {cls}
'''

README = '''# {dist}

An mtd plugin adding the `{kind}` modality (written by `mtd plugins new`).

```bash
pip install -e ".[test]"
mtd plugins validate {kind}
pytest
```

Use it in a task set as `{{ kind = "{kind}", name = "{kind}" }}`.
'''


def write_plugin(name: str, out: str | Path = ".", kind: str | None = None) -> Path:
    """Write the plugin package ``name`` (a distribution name such as ``mtd-stars``) into ``out/name``.

    Returns:
        The package folder.

    Raises:
        ConfigError: a name that is not a lower-case distribution name, a kind that is not an identifier, or a
            folder that already exists (nothing is overwritten).
    """
    if not NAME.match(name):
        raise ConfigError(f"{name!r} is not a distribution name: lower-case letters and digits in parts "
                          "joined by '-', e.g. mtd-stars")
    kind = kind or name.removeprefix("mtd-").replace("-", "_")
    if not kind.isidentifier():
        raise ConfigError(f"--kind {kind!r} must be an identifier, e.g. stars")
    root = Path(out) / name
    if root.exists():
        raise ConfigError(f"{root} already exists; choose another name or --out")
    package = name.replace("-", "_")
    cls = "".join(part.capitalize() for part in kind.split("_")) + "Modality"
    fields = {"dist": name, "kind": kind, "package": package, "cls": cls}
    files = {"pyproject.toml": PYPROJECT, "README.md": README, f"src/{package}/__init__.py": INIT,
             f"src/{package}/modality.py": MODALITY, "tests/test_conformance.py": TEST}
    for rel, template in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**fields), encoding="utf-8")
    return root
