"""One network evaluation as a sampler sees it: ModelDenoiser turns the model's eps and heads at (z_t, t) into the
step's prediction (the base estimate, the predicted or observed encodings, guidance and conditioning applied)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from mtd_core.diffusion.forward import ForwardProcess
from mtd_core.errors import ConfigError
from mtd_core.modality import Modality
from mtd_core.sampling.base import StepPrediction
from mtd_core.sampling.estimate import BaseEstimate, BaseRange, ObservedBase
from mtd_core.sampling.guidance import Classifier, classifier_grad, guided_eps
from mtd_core.sampling.samples import base_decoder, encoder_of
from mtd_core.types import Prediction

if TYPE_CHECKING:
    from mtd_core.model import MultiTaskModel

CONDITIONING = ("replace", "inject", "exact")

GuideTerm = tuple[Modality, torch.Tensor, float]


def check_conditioning(conditioning: str) -> None:
    if conditioning not in CONDITIONING:
        raise ConfigError(f"generate: conditioning must be one of {list(CONDITIONING)}, got {conditioning!r}")


def base_range(model: MultiTaskModel) -> BaseRange | None:
    """Where the model's base lives in z_0 and its data range (None without a base). A base whose encoder decodes
    (a latent base's autoencoder, samples.py) has no range in Z: its z_0 is a latent, not its data."""
    base = model.taskset.base
    if base is None:
        return None
    spec = base.data_spec()
    if base_decoder(encoder_of(model, base.name)) is not None:
        return BaseRange(channels=model.taskset.base_latent.shape[0], low=None, high=None, name=base.name)
    return BaseRange(channels=model.taskset.base_latent.shape[0], low=spec.low, high=spec.high, name=base.name)


class ModelDenoiser:
    """The StepDenoiser of a model on a (respaced) process: the base estimate, the noise and the encodings of one
    step (true encodings for observed modalities, posterior means E[E_i | z_t] for the others).

    Args:
        model: the MultiTaskModel (or anything with ``__call__(z_t, t) -> DenoiserOutput``, ``predicted_encodings``).
        fp: the process the sampler walks; ``fp.timesteps[k]`` is the original t fed to the network.
        observed: aggregated name -> true encoding E_j(x_j) of every observed aggregated modality.
        guidance: (guiding modality, its target batch, scale) terms; a term with scale > 0 on a generated modality
            puts the target's encoding (``targets``) into the step.
        conditioning: how observed encodings enter a step, "replace", "inject" or "exact" (generate.py, docs);
            "exact" also needs ``observed_data``.
        temperature: generated modality name -> the temperature of its head's probabilities behind its encoding
            (``Modality.temper``); the predictions returned in each StepPrediction stay untempered.
        estimate: how the base estimate is clipped and the noise re-derived (estimate.py).
        base: the base's channels and range, for ``estimate`` (default: :func:`base_range` of the model).
        targets: guided generated modality name -> its target's encoding.
        observed_data: observed aggregated name -> its data (the targets of "exact" conditioning).
        classifiers: guided modality name -> the external classifier that guides it instead of its head.
        cfg_scale: classifier-free guidance w on the observed modalities of a told model (``known_input``):
            eps_untold + w (eps_told - eps_untold), the untold pass without their part (1: off).
        observed_base: (values, known) of the base that the observed modalities show as it is, kept in every
            step's base estimate (estimate.py; ``Modality.observed_base``); None: nothing kept.
    """

    def __init__(self, model: MultiTaskModel, fp: ForwardProcess, observed: Mapping[str, torch.Tensor],
                 guidance: Sequence[GuideTerm] = (), conditioning: str = "replace",
                 temperature: Mapping[str, float] | None = None, estimate: BaseEstimate | None = None,
                 base: BaseRange | None = None, targets: Mapping[str, torch.Tensor] | None = None,
                 observed_data: Mapping[str, torch.Tensor] | None = None,
                 classifiers: Mapping[str, Classifier] | None = None, cfg_scale: float = 1.0,
                 observed_base: ObservedBase | None = None) -> None:
        check_conditioning(conditioning)
        self.model, self.fp, self.observed = model, fp, dict(observed)
        self.conditioning, self.temperature = conditioning, dict(temperature or {})
        self.estimate, self.base = estimate or BaseEstimate(), base if base is not None else base_range(model)
        self.targets, self.cfg_scale = dict(targets or {}), float(cfg_scale)
        self.observed_base = observed_base
        self.classifiers = dict(classifiers or {})
        self.terms = [g for g in guidance if g[2] > 0 and g[0].name not in self.classifiers]
        self.classifier_terms = [g for g in guidance if g[2] > 0 and g[0].name in self.classifiers]
        self.guided = {m.name for m, _, _ in self.terms}
        # a network that reads the observed parts (known_input) gives E[eps | z_t, x_j] itself: "exact" adds nothing
        if conditioning == "exact" and not model.taskset.known_input:
            data = dict(observed_data or {})
            missing = [n for n in self.observed if n not in data]
            if missing:
                raise ConfigError(f"generate: exact conditioning needs the observed data of {missing}")
            self.terms += [(model.taskset[n], data[n], 1.0) for n in self.observed]

    def _encodings(self, preds: Mapping[str, Prediction]) -> dict[str, torch.Tensor]:
        """The posterior-mean encodings of the given predictions, tempered where asked."""
        tempered = {n: self.model.taskset[n].temper(p, self.temperature[n]) if n in self.temperature else p
                    for n, p in preds.items()}
        return self.model.predicted_encodings(tempered)

    def _classifier_grad(self, z: torch.Tensor, t: torch.Tensor, known: Mapping[str, torch.Tensor], k: int
                         ) -> torch.Tensor:
        """The external classifiers' scaled grad log p(y | x_t), x_t the base's channels of z less the known parts."""
        C = self.model.taskset.base_latent.shape[0]
        x_t = (z - self.fp.known_part(known, k, z) if known else z)[:, :C]
        grad = sum(classifier_grad(self.classifiers[m.name], m, y, s, x_t, t) for m, y, s in self.classifier_terms)
        assert isinstance(grad, torch.Tensor)
        return torch.cat([grad, grad.new_zeros(grad.shape[0], z.shape[1] - C, *grad.shape[2:])], dim=1)

    def __call__(self, z: torch.Tensor, k: int) -> StepPrediction:
        t = self.fp.timesteps[k].to(z.device).expand(z.shape[0])
        # a task set with known_input also reads the part of z of the observed (and committed) modalities and of
        # the guidance targets; the guiding heads read it without their own modalities' (guidance.py)
        known_input = self.model.taskset.known_input
        known = {**self.targets, **self.observed}
        part = self.fp.known_part(known, k, z) if known_input and known else None
        if self.terms:
            hidden = None
            if part is not None and self.guided & known.keys():
                hidden = self.fp.known_part({n: e for n, e in known.items() if n not in self.guided}, k, z)
            eps, preds = guided_eps(self.model, z, t, float(self.fp.abar[k]), self.terms, part, hidden)
        else:
            out = self.model(z, t) if part is None else self.model(z, t, part)
            eps, preds = out.eps.to(z.dtype), out.preds
        if self.cfg_scale != 1.0 and part is not None and self.observed:
            # classifier-free guidance (Ho & Salimans 2022, eq. 6 with w + 1 -> w): the untold pass hides the
            # observed modalities' part of the known input, as known_dropout does in training
            untold = {n: e for n, e in known.items() if n not in self.observed}
            out_u = self.model(z, t) if not untold else self.model(z, t, self.fp.known_part(untold, k, z))
            eps_u = out_u.eps.to(z.dtype)
            eps = eps_u + self.cfg_scale * (eps - eps_u)
        if self.classifier_terms:
            eps = eps - float(1.0 - self.fp.abar[k]) ** 0.5 * self._classifier_grad(z, t, known, k)
        enc_hat = {n: e.to(z.dtype) for n, e in self._encodings(preds).items()}
        # The decomposition z = sqrt(abar) z0_hat + sum_i lambda_i E_i + sqrt(1 - abar) eps the network's eps belongs
        # to: its own encodings, except those of steered targets and, unless replacing, of observed modalities (a
        # network that reads the observed part as its known input decomposes with the true encodings: no replacing).
        replace = self.conditioning == "replace" and not known_input
        enc_dec = {**enc_hat, **self.targets, **({} if replace else self.observed)}
        enc = {**enc_hat, **known}
        z0_hat = self.fp.z0_from_eps(z, eps, enc_dec, k)
        start = z
        if replace and self.observed:
            # swapping the observed E_j(xhat_j) for the true E_j leaves z0_hat unchanged and steps with the truth
            delta = {n: enc[n] - enc_dec[n] for n in enc}
            start = z + self.fp.injected(delta, k, z)
        z0, eps, start = self.estimate.apply(self.fp, start, k, z0_hat, eps, enc, self.base, self.observed_base)
        return StepPrediction(eps=eps, z0=z0, enc=enc, preds=preds, z_t=None if start is z else start)


