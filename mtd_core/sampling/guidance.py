"""Classifier guidance from the model's own heads (Dhariwal & Nichol 2021, section 4, the eps form).

No separate classifier: a modality's head already gives log p_theta(y | z_t) = -Modality.loss(head(z_t), y) at
every noise level (heads are trained across t). Guidance towards a target y shifts eps_theta by

    eps_guided = eps_theta(z_t, t) - scale * sqrt(1 - abar_t) * grad_{z_t} log p_theta(y | z_t)

which every sampler then uses unchanged. For a label this is the gradient of the log-softmax of the label head's
logits at the target class. At scale 1 it is exact: the network's eps is E[eps | z_t], and Tweedie's formula on
p(z_t | y) = p(z_t) p(y | z_t) / p(y) gives E[eps | z_t, y] = E[eps | z_t] - sqrt(1 - abar_t) grad log p(y | z_t),
which is what conditioning = "exact" uses (docs/sampling.md). Several terms (several modalities, or a guided one
beside exact conditioning) add their gradients.

A task set with ``known_input`` shows the backbone the known part of z_t. A head told its own modality's part reads
the answer from it, and its gradient with respect to z_t is about zero, so the heads guide on the hidden path: the
known part without the guided modalities' (what the model is trained on ``known_dropout`` of the time), while eps
comes from the told path. On a told model guidance at scale s thus adds s times log p(y | z_t) to a network that is
already conditioned on y, as guidance on a class-conditional model does (Dhariwal & Nichol 2021, section 4).

A head reads all of z_t, including the guided modality's own part where it shares the base's channels (the built-in
label's), and is as sure of y there as the told network. An external noise-aware classifier of the base alone
(``GuidanceConfig.classifier``) cannot see that part: it reads x_t, the base's channels of z_t less every known
aggregated part, which is the single-task DDPM state sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps when the unknown
modalities live in channels of their own; d x_t / d z_t is the identity there, so its gradient enters eps as a
head's does (Dhariwal & Nichol 2021, section 4, with their noisy ImageNet classifier).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs
import torch

from mtd_core.errors import ConfigError, closest
from mtd_core.modality import Modality, Role
from mtd_core.outputs import checked_loss
from mtd_core.types import Prediction

if TYPE_CHECKING:
    from mtd_core.model import MultiTaskModel

Classifier = Callable[[torch.Tensor, torch.Tensor], Prediction]
"""A noise-aware classifier of the base: (x_t, t) -> a prediction of the guided modality in its head's form."""


@attrs.frozen
class GuidanceConfig:
    """Steer generation towards a target value of one aggregated modality.

    Args:
        modality: the name of the guiding modality (its head supplies log p(y | z_t)); usually a label.
        target: the target data: one example (e.g. a class index, broadcast to the batch) or one per sample
            (a list or tensor of length n).
        scale: the guidance scale s (0 turns guidance off; larger follows the target more strictly).
        classifier: None (the model's own head of ``modality``) or an external noise-aware classifier of the base
            alone, ``classifier(x_t, t)`` -> a prediction of ``modality`` in its head's form (a label's logits),
            scored by the modality's loss. x_t is the base's channels of z_t less every known aggregated part, a
            state shaped like the base's latent, and t the original timesteps (B,): train it on
            sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps of the model's noise schedule (module docstring). An nn.Module
            must already be on the sampling device.
    """

    modality: str
    target: object
    scale: float = 1.0
    classifier: Classifier | None = None

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale) or self.scale < 0:
            raise ConfigError(f"guidance on {self.modality!r}: scale must be a finite number >= 0, got {self.scale!r}")
        if self.classifier is not None and not callable(self.classifier):
            raise ConfigError(f"guidance on {self.modality!r}: classifier must be None (the model's own head) or a "
                              f"callable (x_t, t) -> prediction, got {type(self.classifier).__name__}")


def resolve_target(m: Modality, target: object, n: int, device: torch.device) -> torch.Tensor:
    """The guidance target as a validated batch of ``n`` examples of ``m``'s data on ``device``."""
    spec = m.data_spec()
    x = target if isinstance(target, torch.Tensor) else torch.as_tensor(
        list(target) if isinstance(target, Sequence) and not isinstance(target, str) else target)
    if tuple(x.shape) == spec.shape:
        x = x.expand(n, *spec.shape)
    if x.dtype != spec.torch_dtype and x.is_floating_point() == spec.torch_dtype.is_floating_point:
        x = x.to(spec.torch_dtype)  # same kind only (int32 -> int64, float64 -> float32); never int <-> float
    m.validate(x, where="guidance target")
    if x.shape[0] != n:
        raise ConfigError(f"guidance on {m.name!r}: the target has {x.shape[0]} examples, the batch has {n}")
    return x.to(device)


def check_guidance(guidance: GuidanceConfig, modalities: dict[str, Modality]) -> Modality:
    """The guiding modality, after checking that it exists and is aggregated (it must have a head)."""
    if not isinstance(guidance, GuidanceConfig):
        raise ConfigError(f"guidance must be a GuidanceConfig, got {type(guidance).__name__}")
    if guidance.modality not in modalities:
        raise ConfigError(
            f"guidance: no modality {guidance.modality!r}{closest(guidance.modality, list(modalities))}; "
            f"the task set has {list(modalities)}"
        )
    m = modalities[guidance.modality]
    if m.role is not Role.AGGREGATED:
        raise ConfigError(f"guidance: modality {m.name!r} is the base and has no head to guide with")
    return m


def head_classifier(classifier: MultiTaskModel, modality: str, model: MultiTaskModel | None = None) -> Classifier:
    """A trained model's head of ``modality`` as a noise-aware classifier of the base (``GuidanceConfig.classifier``).

    The classifier model must read x_t alone: ``modality`` is aggregated in it with the zero weight schedule and it
    has no auxiliary channels, so its z_t is the base's DDPM state. Train it with the base's ``loss_weight = 0`` to
    train the head alone (examples/configs/label_classifier.toml). Given ``model``, the model it will guide, the two
    must agree on the base's latent shape, the noise schedule and ``modality``'s kind. Errors are ConfigErrors
    naming what differs.
    """
    from mtd_core.diffusion.weights import ZeroWeight

    ts = classifier.taskset
    where = f"guidance classifier for {modality!r}"
    m = ts.modalities.get(modality)
    if m is None or m.role is not Role.AGGREGATED:
        raise ConfigError(f"{where}: the classifier's task set has no aggregated modality {modality!r}"
                          f"{closest(modality, list(ts.modalities))}; it has {list(ts.modalities)}")
    if not isinstance(m.weights, ZeroWeight) or ts.aux_channels:
        raise ConfigError(f"{where}: the classifier must read the base's state alone, but its z_t holds "
                          f"{modality!r}'s part (weights {m.weights.to_config()}, aux_channels {ts.aux_channels}); "
                          f"train it with weights = {{kind = \"zero\"}} and aux_channels = 0")
    if model is not None:
        mine = model.taskset
        if tuple(mine.base_latent.shape) != tuple(ts.latent.shape):
            raise ConfigError(f"{where}: it reads states of shape {list(ts.latent.shape)}, the model's base has "
                              f"{list(mine.base_latent.shape)}")
        if mine.noise.to_config() != ts.noise.to_config():
            raise ConfigError(f"{where}: its noise schedule {ts.noise.to_config()} differs from the model's "
                              f"{mine.noise.to_config()}: it would read x_t at the wrong noise level")
        theirs = mine.modalities.get(modality)
        if theirs is None or theirs.kind != m.kind:
            raise ConfigError(f"{where}: the classifier's {modality!r} is of kind {m.kind!r}, the model's "
                              f"{'is missing' if theirs is None else f'is of kind {theirs.kind!r}'}")

    def read(x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        return classifier(x_t, t).preds[modality]

    return read


def classifier_grad(classifier: Classifier, m: Modality, target: torch.Tensor, scale: float, x_t: torch.Tensor,
                    t: torch.Tensor) -> torch.Tensor:
    """scale * grad_{x_t} log p(y | x_t) of an external classifier, log p = -Modality.loss(classifier(x_t, t), y)."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        log_p = -(checked_loss(m, classifier(x, t), target) * scale).sum()
        grad = torch.autograd.grad(log_p, x, allow_unused=True)[0] if log_p.requires_grad else None
    return torch.zeros_like(x_t) if grad is None else grad.to(x_t.dtype)


def guided_eps(model: MultiTaskModel, z_t: torch.Tensor, t: torch.Tensor, abar_t: float,
               terms: Sequence[tuple[Modality, torch.Tensor, float]], known: torch.Tensor | None = None,
               hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Prediction]]:
    """eps_theta guided towards every term's target (see the module docstring) and the heads' (detached)
    predictions.

    Args:
        model: the MultiTaskModel (called as ``model(z_t, t, known)``).
        z_t: the current state.
        t: the original timesteps (B,).
        abar_t: abar at t (float64 precision).
        terms: (modality, its target data with one example per row of z_t, scale) for every guiding modality.
        known: the known aggregated part of z_t (MultiTaskModel.forward), held fixed; None: not passed.
        hidden: the known part the guiding heads read, when it differs from ``known`` (``known`` without the guided
            modalities' parts): eps and the returned predictions then come from a second, told pass.
    """
    with torch.enable_grad():
        z = z_t.detach().requires_grad_(True)
        read = known if hidden is None else hidden
        out = model(z, t) if read is None else model(z, t, read)
        log_p = sum((-checked_loss(m, out.preds[m.name], target) * scale).sum() for m, target, scale in terms)
        assert isinstance(log_p, torch.Tensor)
        # a head that does not depend on z_t (a constant prediction) has no gradient: it guides by zero
        grad = (torch.autograd.grad(log_p, z, allow_unused=True)[0] if log_p.requires_grad else None)
        grad = torch.zeros_like(z) if grad is None else grad
    if hidden is not None:
        with torch.no_grad():
            out = model(z_t, t) if known is None else model(z_t, t, known)
    eps = out.eps.detach().to(z_t.dtype) - math.sqrt(1.0 - abar_t) * grad.to(z_t.dtype)
    preds = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in out.preds.items()}
    return eps, preds
