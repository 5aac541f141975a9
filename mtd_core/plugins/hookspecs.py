"""The hook specifications of mtd: the contract between the framework and every plugin.

A plugin is a module (or any object) with functions decorated by :data:`hookimpl`, found through the
entry-point group ``mtd`` (``[project.entry-points.mtd]`` in its pyproject.toml) or registered explicitly
with :meth:`mtd_core.plugins.Registry.register`. Only the hooks a plugin implements are called.

Every hook is called once per plugin when the registry loads (lazily, on first use), with no arguments, and
every plugin's result is collected (no hook is ``firstresult``). A hook that raises, or returns something
invalid, is reported with the plugin's name and distribution and skipped; the other plugins still load.

This module imports nothing heavier than pluggy, so listing or validating plugins builds no torch model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # type names only: this module must not import torch
    from torch import nn

    from mtd_core.data.splits import DatasetSplits
    from mtd_core.diffusion.noise import NoiseSchedule
    from mtd_core.diffusion.weights import WeightSchedule
    from mtd_core.modality import Modality
    from mtd_core.sampling.base import Sampler, SamplerOutput

PROJECT = "mtd"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def mtd_register_modalities() -> Sequence[type[Modality]]:
    """Return the Modality subclasses this plugin provides.

    Each must be a concrete subclass of :class:`mtd_core.modality.Modality` with a unique ``kind``
    (the name users write in task sets). Two plugins returning the same ``kind`` is an error that names
    both distributions; neither is registered under that name.
    """


@hookspec
def mtd_register_datasets() -> Mapping[str, Callable[..., DatasetSplits]]:
    """Return dataset factories by name.

    A factory takes keyword options (from the ``[dataset]`` table of a config, minus ``name``) and
    returns a :class:`mtd_core.data.DatasetSplits`: train and test ``torch.utils.data.Dataset`` objects
    whose items are dicts keyed by modality name. A factory must never download anything; when its files
    are missing it raises an error saying how to get them.
    """


@hookspec
def mtd_register_backbones() -> Mapping[str, Callable[..., nn.Module]]:
    """Return backbone factories by name.

    A factory is called as ``factory(latent: LatentSpec, **options)`` and returns an ``nn.Module`` with a
    ``feature_spec: FeatureSpec`` attribute whose ``forward(z_t, t)`` returns a
    :class:`mtd_core.backbones.BackboneOutput` (eps, pooled features, full-resolution feature map).
    ``t`` is the original integer timestep in 1..T, shape (B,).
    """


@hookspec
def mtd_register_metrics() -> Mapping[str, Callable[..., Mapping[str, float]]]:
    """Return metric factories by name.

    A metric is called with an :class:`mtd_core.metrics.EvalContext` (real and generated data by modality
    name, the feature network, ...) and returns a mapping of named float results; see ``docs/metrics.md`` for
    the exact signature. It applies to the task sets for which its ``applies_to(taskset) -> bool`` is true.
    """


@hookspec
def mtd_register_samplers() -> Mapping[str, Sampler | Callable[..., SamplerOutput]]:
    """Return samplers by name.

    A sampler is a :class:`mtd_core.sampling.Sampler` spec (its function, network evaluations per step, fewest
    steps, whether it draws noise) or a bare function, taken as one evaluation per step. Every sampler function has
    the signature ``fn(denoise, z, fp, *, generator=None, callback=None, progress=False, **options) ->
    SamplerOutput``: it walks the respaced process ``fp`` from index K = ``fp.T`` down to 0, asking ``denoise(z_k,
    k)`` for a :class:`mtd_core.sampling.StepPrediction` (base estimate, noise, encodings), and returns the final
    state. Its keyword-only options are what ``generate(..., sampler_options=...)`` and ``mtd sample --option``
    accept. See docs/sampling.md.
    """


@hookspec
def mtd_register_weight_schedules() -> Mapping[str, Callable[..., WeightSchedule]]:
    """Return aggregation weight schedules by kind: ``kind -> cls`` with ``cls(**params)`` a
    :class:`mtd_core.diffusion.WeightSchedule` (w_t^(i) or lambda_t^(i) of one modality, lambda_T = 0 checked).

    A modality's ``weights = {kind = "...", ...}`` in a task-set config names one.
    """


@hookspec
def mtd_register_noise_schedules() -> Mapping[str, Callable[..., NoiseSchedule]]:
    """Return noise schedules by kind: ``kind -> factory`` with ``factory(T=..., **params)`` a
    :class:`mtd_core.diffusion.NoiseSchedule` (beta_1..beta_T in (0, 1)).

    A task set's ``diffusion = {kind = "...", T = ..., ...}`` names one.
    """


@hookspec
def mtd_register_transforms() -> Mapping[str, type]:
    """Return dataset transforms by kind: ``kind -> cls``, an attrs class whose instances are called on a collated
    batch (``dict`` of fields) and return it with fields added or changed, and whose ``to_config()`` gives
    ``{"kind": ..., **options}`` back. A dataset config's ``transforms = [{kind = "...", ...}]`` names them.
    A transform that needs the dataset's info (e.g. its ``class_names``) defines ``with_info(info)``, returning the
    transform to use; ``load_dataset`` calls it once the dataset is loaded.
    """
