"""The evaluation context: everything a registered metric may read, in one object.

A metric (see :mod:`mtd_core.metrics.base`) is called as ``metric(ctx)``. The context holds tensors keyed by
modality name, never a model, so metrics stay independent of how the samples were produced:

    generated  what the model produced (every modality it generated), n rows each
    given      what generation was conditioned on (empty for joint generation), n rows each, row-aligned
    targets    ground truth for generated modalities, row-aligned (e.g. the true labels of given test images,
               the clean images behind given masked images)
    real       real test data, not aligned with anything (the reference set of FID, KID, precision/recall)

plus the modality kinds (name -> kind), the base modality's name, the feature network, optional cached
reference features and representation extractors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import attrs
import torch

from mtd_core.metrics.errors import MetricError
from mtd_core.types import Role
from mtd_core.metrics.features import FeatureNetResult, features
from mtd_core.metrics.fid import ReferenceFeatures, reference_features

if TYPE_CHECKING:
    from mtd_core.modality import Modality


class TaskSetLike(Protocol):
    """What the metrics read of a task set: a :class:`~mtd_core.taskset.TaskSet`, or any object whose
    ``modalities`` holds its Modality objects (by name, or in a sequence)."""

    @property
    def modalities(self) -> Mapping[str, Modality] | Sequence[Modality]: ...


def _modalities(taskset: TaskSetLike) -> list[Modality]:
    mods = getattr(taskset, "modalities", None)
    if mods is None:
        raise MetricError(f"expected a TaskSet (an object with a 'modalities' attribute), got {type(taskset).__name__}")
    return list(mods.values()) if isinstance(mods, Mapping) else list(mods)


def _str_dict(kinds: Mapping[str, str]) -> dict[str, str]:
    """A converter: a fresh dict, so a context never shares the caller's mapping."""
    return dict(kinds)


def modality_kinds(taskset: TaskSetLike) -> dict[str, str]:
    """Modality name -> kind for a TaskSet (anything whose ``modalities`` holds Modality objects)."""
    return {m.name: m.kind for m in _modalities(taskset)}


def base_modality(taskset: TaskSetLike) -> Modality | None:
    """The task set's base modality, or None when it has none."""
    return next((m for m in _modalities(taskset) if m.role is Role.BASE), None)


def base_name(taskset: TaskSetLike) -> str | None:
    """The name of the task set's base modality, or None when it has none."""
    base = base_modality(taskset)
    return None if base is None else str(base.name)


def _tensor_dict(value: object) -> dict[str, torch.Tensor]:
    if not isinstance(value, Mapping):
        raise MetricError(f"expected a mapping of modality name -> tensor, got {type(value).__name__}")
    return dict(value)


@attrs.define
class EvalContext:
    """The data one evaluation works on (see the module docstring for the meaning of each mapping).

    Args:
        kinds: modality name -> kind ("image", "label", ...) for every modality of the task set.
        base: the base modality's name (None when the task set has no base).
        generated: modality name -> generated samples (n, ...); every tensor has the same n.
        given: modality name -> the conditioning data (n, ...), row-aligned with ``generated``.
        targets: modality name -> ground truth for a generated modality (n, ...), row-aligned with ``generated``.
        real: modality name -> real test data (any number of rows); ``real[base]`` is the reference image set.
        feature_net: the trained feature network (needed by FID, KID, precision/recall and label agreement).
        reference: precomputed reference features of ``real[base]`` (default: computed on first use, cached).
        extractors: representation modality name -> the callable mapping base images to its vectors.
        seed: seeds random parts of metrics (KID subsets).
        batch_size: images per feature-network forward pass.
        cache_dir: cache root for reference features (default ``$MTD_CACHE_DIR`` or ``~/.cache/mtd``).
        use_cache: read and write the reference-feature cache.
    """

    kinds: dict[str, str] = attrs.field(converter=_str_dict)
    base: str | None = None
    generated: dict[str, torch.Tensor] = attrs.field(factory=dict, converter=_tensor_dict)
    given: dict[str, torch.Tensor] = attrs.field(factory=dict, converter=_tensor_dict)
    targets: dict[str, torch.Tensor] = attrs.field(factory=dict, converter=_tensor_dict)
    real: dict[str, torch.Tensor] = attrs.field(factory=dict, converter=_tensor_dict)
    feature_net: FeatureNetResult | None = None
    reference: ReferenceFeatures | None = None
    extractors: dict[str, Callable[[torch.Tensor], torch.Tensor]] = attrs.field(factory=dict, converter=dict)
    seed: int = 0
    batch_size: int = 256
    cache_dir: str | Path | None = None
    use_cache: bool = True
    _memo: dict[str, torch.Tensor | ReferenceFeatures] = attrs.field(factory=dict, init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        known = sorted(self.kinds)
        if self.base is not None and self.base not in self.kinds:
            raise MetricError(f"EvalContext: base {self.base!r} is not one of the modalities {known}")
        for field in ("generated", "given", "targets", "real", "extractors"):
            for name, value in getattr(self, field).items():
                if name not in self.kinds:
                    raise MetricError(f"EvalContext.{field}: {name!r} is not a modality of the task set {known}")
                if field != "extractors" and not isinstance(value, torch.Tensor):
                    raise MetricError(f"EvalContext.{field}[{name!r}]: expected a torch.Tensor, got {type(value).__name__}")
                if field == "extractors" and not callable(value):
                    raise MetricError(f"EvalContext.extractors[{name!r}]: expected a callable, got {type(value).__name__}")
        rows = {f"{field}[{name!r}]": int(v.shape[0]) for field in ("generated", "given", "targets")
                for name, v in getattr(self, field).items()}
        if len(set(rows.values())) > 1:
            listing = "\n".join(f"  {k}: {n} rows" for k, n in rows.items())
            raise MetricError("EvalContext: generated, given and targets must be row-aligned (the same number of "
                              f"samples), got:\n{listing}")
        if self.feature_net is not None and not isinstance(self.feature_net, FeatureNetResult):
            raise MetricError(f"EvalContext.feature_net: expected a FeatureNetResult, got {type(self.feature_net).__name__}")

    @classmethod
    def from_taskset(cls, taskset: TaskSetLike, **fields: Any) -> EvalContext:  # Any: fields of several types
        """A context for ``taskset`` (kinds and base read from it); ``fields`` are the other arguments."""
        return cls(kinds=modality_kinds(taskset), base=base_name(taskset), **fields)

    def names(self, kind: str) -> list[str]:
        """The names of the modalities of ``kind``, in task-set order."""
        return [n for n, k in self.kinds.items() if k == kind]

    @property
    def n_generated(self) -> int:
        """Number of generated samples (0 when nothing was generated)."""
        return next((int(v.shape[0]) for v in self.generated.values()), 0)

    def generated_features(self) -> torch.Tensor:
        """Feature-network features of the generated base images (computed once per context)."""
        if "generated_features" not in self._memo:
            if self.feature_net is None or self.base is None or self.base not in self.generated:
                raise MetricError("EvalContext: generated features need a feature_net and generated base images")
            self._memo["generated_features"] = features(self.feature_net, self.generated[self.base], self.batch_size)
        return cast(torch.Tensor, self._memo["generated_features"])

    def reference_features(self) -> ReferenceFeatures:
        """Features of the real base images: ``reference`` when given, else computed once (and disk-cached)."""
        if self.reference is not None:
            return self.reference
        if "reference" not in self._memo:
            if self.feature_net is None or self.base is None or self.base not in self.real:
                raise MetricError("EvalContext: reference features need a feature_net and real base images "
                                  "(real[base]) or a precomputed reference")
            self._memo["reference"] = reference_features(self.feature_net, self.real[self.base],
                                                         batch_size=self.batch_size, cache_dir=self.cache_dir,
                                                         use_cache=self.use_cache)
        return cast(ReferenceFeatures, self._memo["reference"])
