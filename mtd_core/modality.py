"""The Modality contract: what every modality plugin implements (docs/plugins.md).

A :class:`Modality` is a configured modality inside a task set: its instance ``name`` (the key of its data in
every batch), its :class:`Role`, its options (an attrs ``Config`` class of the subclass), its aggregation weight
schedule w_t and its loss weight. It is a factory and a set of pure functions; the trainable parts (encoder E_i and
decoder head) are ``nn.Module`` objects it builds and the model owns.

    role BASE        its encoding is z_0 (an image: the identity on [-1, 1]); at most one per task set.
    role AGGREGATED  injected into z_t through E_i with weights w_t^(i); predicted back by its head.

The shared types (Role, DataSpec, LatentSpec, ...) live in mtd_core/types.py and are re-exported here. This module
builds nothing at import time.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

import attrs
import torch
from torch import nn

from mtd_core.config_types import FLOAT32_MAX, check_fields, check_weights, is_float32
from mtd_core.design import Design
from mtd_core.diffusion.weights import SCHEDULES, WeightSchedule, ZeroWeight, weight_schedule_from_config
from mtd_core.errors import ConfigError, ModalityDataError, closest
from mtd_core import values
from mtd_core.types import (
    BasePrediction,
    Batch,
    BatchValue,
    ConfigDict,
    ConfigMapping,
    ConfigValue,
    DataSpec,
    FeatureSpec,
    HeadInput,
    LatentSpec,
    Prediction,
    Role,
)

__all__ = ["BasePrediction", "DataSpec", "Design", "FeatureSpec", "HeadInput", "LatentSpec", "Modality", "NoOptions", "Role",
           "rms_normalize"]


def is_temperature(tau: object) -> bool:
    """Whether ``tau`` is a valid encoding temperature: a positive finite number (not a bool)."""
    return isinstance(tau, (int, float)) and not isinstance(tau, bool) and 0 < tau < math.inf


def rms_normalize(e: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """e / RMS(e) per example: unit mean square over every non-batch dimension, so only w_t sets the strength."""
    return e * torch.rsqrt(e.pow(2).flatten(1).mean(1).clamp_min(eps)).reshape(-1, *([1] * (e.ndim - 1)))


def _plain(inst: object, field: attrs.Attribute, value: object) -> object:
    """attrs value serializer: tuples become lists, so configs hold JSON/TOML types only."""
    return list(value) if isinstance(value, tuple) else value


@attrs.frozen
class NoOptions:
    """The Config of a modality without options."""


class Modality(abc.ABC):
    """A configured modality. Subclass it, set the class attributes, implement the abstract methods.

    Class attributes:
        kind: the registered type name ("image", "label", ...), unique across installed plugins.
        roles: the roles the modality supports.
        head_input: the features its head reads (HeadInput.NONE only for a base-only modality).
        Config: an attrs class of its options; every field documented, every value JSON-representable.
        exact_sample: ``sample(pred, greedy=False)`` draws from exactly the distribution the head models (a
            categorical over one value, as a label's), so a draw from the head at t = T is a draw from the model's
            prior of the modality; ``generate`` may then draw it first and generate the rest given it (joint =
            "commit"). False for heads that model each element apart (a caption's tokens) or only a mean.
        default_loss_weight: the weight c_i of this kind's term in the training loss when a config gives none.
        required_options: ``Config`` fields without a usable default (a latent base's autoencoder folder):
            ``mtd plugins validate`` with no kinds named reports such a kind as skipped, not failed, unless
            ``--option`` gives them.
        design: the training and sampling design this kind was measured best with (mtd_core/design.py): its own
            channels of Z, head gradient share, known input, encoding scale, fixed or learned code, guidance
            scale. Whatever a config leaves out comes from here, so a minimal config builds the measured design.
        default_encoding_temperature: the temperature of its head's probabilities behind its encoding in every
            reverse step when ``generate(..., encoding_temperature=...)`` does not name it (1: the posterior mean;
            set below 1 only by a kind that overrides ``temper`` and measured it; docs/sampling.md). A sampling
            choice: training and the ELBO do not see it.
        former_defaults: options whose default this kind changed, at the value they had before; a saved config
            (a checkpoint's) that leaves one out was written with that value and is read with it.

    Args:
        name: the instance name, the key of its data in batches (default: ``kind``).
        role: ``Role.BASE`` or ``Role.AGGREGATED`` (default: the first of ``roles``).
        weights: the aggregation schedule w_t (a WeightSchedule or its config dict). Ignored for the base,
            required to be valid on the task set's noise schedule otherwise (default: ``default_weights()``).
        loss_weight: this modality's weight c_i >= 0 in the multi-task training loss (default:
            ``default_loss_weight``, which a kind sets to what was measured for it). The base's weights the
            denoising term (1: DDPM; 0 trains the heads alone, e.g. a noise-aware classifier of the base).
        head_grad: the share in [0, 1] of its head's loss gradient that reaches the shared backbone (default: the
            kind's ``design.head_grad``; 1 is the paper's joint training; 0 trains the head on the backbone's
            features without letting it shape them; docs/modalities.md, math.md section 6). The forward pass is
            unchanged; only training differs.
        train_encoder: whether training updates its encoder E_i (default: the kind's ``design.train_encoder``).
            False keeps E_i at its initialisation, a fixed code of the data, as diffusion models keep a pretrained
            text encoder fixed: a learned encoder can drift to codes the denoiser predicts without looking.
        **options: fields of ``Config``; an unknown one is a ConfigError naming the nearest valid field.
    """

    kind: ClassVar[str]
    roles: ClassVar[tuple[Role, ...]] = (Role.AGGREGATED,)
    head_input: ClassVar[HeadInput] = HeadInput.POOLED
    Config: ClassVar[type] = NoOptions
    exact_sample: ClassVar[bool] = False
    default_loss_weight: ClassVar[float] = 1.0
    required_options: ClassVar[tuple[str, ...]] = ()
    default_encoding_temperature: ClassVar[float] = 1.0
    design: ClassVar[Design] = Design()
    former_defaults: ClassVar[Mapping[str, ConfigValue]] = {}

    def __init__(self, name: str | None = None, role: Role | str | None = None,
                 weights: WeightSchedule | ConfigMapping | None = None, loss_weight: float | None = None,
                 head_grad: float | None = None, train_encoder: bool | None = None, **options: ConfigValue) -> None:
        self.name = self.kind if name is None else name  # "", 0 or False is an error, not the default
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f"modality {self.name!r}: a name must be a Python identifier")
        try:
            self.role = Role(role) if role is not None else self.roles[0]
        except ValueError:
            raise ConfigError(f"modality {self.name!r}: role must be 'base' or 'aggregated', got {role!r}") from None
        if self.role not in self.roles:
            raise ConfigError(
                f"modality {self.name!r} (kind {self.kind!r}) cannot take the role {self.role.value!r}; "
                f"it supports {[r.value for r in self.roles]}"
            )
        fields = {f.name for f in attrs.fields(self.Config)}
        for key in options:
            if key not in fields:
                raise ConfigError(
                    f"modality {self.name!r} (kind {self.kind!r}): unknown option {key!r}{closest(key, fields)}; "
                    f"valid options: {sorted(fields)}"
                )
        try:
            self.config = self.Config(**options)
        except (TypeError, ValueError, OverflowError) as e:
            raise ConfigError(f"modality {self.name!r} (kind {self.kind!r}): invalid options {options}: {e}") from None
        # what the fields' own validators let through (a field without one): its annotation's type, or an error
        check_fields(self.Config, options, lambda key: f"modality {self.name!r} (kind {self.kind!r}): option {key!r}")
        if weights is not None and not isinstance(weights, WeightSchedule):
            check_weights(weights, self.name, SCHEDULES)
        if self.role is Role.BASE:
            self.weights: WeightSchedule = ZeroWeight()
        else:
            self.weights = (weight_schedule_from_config(dict(weights) if isinstance(weights, Mapping) else weights, self.name)
                            if weights is not None else self.default_weights())
        c = self.default_loss_weight_for(self.role) if loss_weight is None else loss_weight
        if not is_float32(c) or c < 0:
            raise ConfigError(f"modality {self.name!r}: loss_weight must be a finite number >= 0 (its weight in the "
                              f"training loss; at most {FLOAT32_MAX:.3g}, float32's largest), got {loss_weight!r}")
        self.loss_weight = float(c)
        head_grad = self.design.head_grad if head_grad is None else head_grad
        train_encoder = self.design.train_encoder if train_encoder is None else train_encoder
        if not is_float32(head_grad) or not 0.0 <= head_grad <= 1.0:
            raise ConfigError(f"modality {self.name!r}: head_grad must be a number in [0, 1] (the share of its "
                              f"head's gradient that reaches the backbone), got {head_grad!r}")
        self.head_grad = float(head_grad)
        if not isinstance(train_encoder, bool):
            raise ConfigError(f"modality {self.name!r}: train_encoder must be true or false, got {train_encoder!r}")
        self.train_encoder = train_encoder

    # -- configuration ----------------------------------------------------------------------------
    @classmethod
    def default_loss_weight_for(cls, role: Role) -> float:
        """The loss weight c_i when a config gives none: ``default_loss_weight`` (a kind that takes both roles and
        was measured apart in each, as the image, overrides this)."""
        return cls.default_loss_weight

    def default_weights(self) -> WeightSchedule:
        """The aggregation schedule used when none is given."""
        from mtd_core.diffusion.weights import WindowedLambda

        return WindowedLambda()

    def to_config(self) -> ConfigDict:
        """A plain, JSON/TOML-representable dict; ``registry.build(config)`` rebuilds an equal modality."""
        out: ConfigDict = {"kind": self.kind, "name": self.name, "role": self.role.value}
        if self.role is Role.AGGREGATED:
            out["weights"] = self.weights.to_config()
        out["loss_weight"] = self.loss_weight
        if self.role is Role.AGGREGATED:  # written out, so that a saved config keeps them if a kind's design changes
            out["head_grad"], out["train_encoder"] = self.head_grad, self.train_encoder
        out.update(attrs.asdict(self.config, value_serializer=_plain))
        return out

    @classmethod
    def from_config(cls, config: ConfigMapping) -> Modality:
        """Inverse of :meth:`to_config` for this class (the ``kind`` key, if present, must match)."""
        config = dict(config)
        kind = config.pop("kind", cls.kind)
        if kind != cls.kind:
            raise ConfigError(f"modality config of kind {kind!r} given to {cls.__name__} (kind {cls.kind!r})")
        return cls(**config)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Modality) and type(other) is type(self) and other.to_config() == self.to_config()

    def __hash__(self) -> int:
        return hash((self.kind, self.name))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_config()})"

    # -- data -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def data_spec(self) -> DataSpec:
        """Shape, dtype and value range of one example of this modality's data."""

    def validate(self, x: object, *, where: str = "") -> None:
        """Raise ModalityDataError unless ``x`` is a batch matching :meth:`data_spec`.

        Checks, in order: a tensor; the per-example shape; the dtype; no NaN or infinity; the value range.
        The message names the modality, ``where`` (a file or index, if given), what was expected and received.
        """
        spec = self.data_spec()
        at = f" ({where})" if where else ""
        who = f"modality {self.name!r}{at}"
        if not isinstance(x, torch.Tensor):
            raise ModalityDataError(f"{who}: expected a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape[1:]) != spec.shape or x.ndim != len(spec.shape) + 1:
            raise ModalityDataError(
                f"{who}: expected a batch of shape (B, {', '.join(map(str, spec.shape))}), got {tuple(x.shape)}"
            )
        if x.dtype != spec.torch_dtype:
            raise ModalityDataError(f"{who}: expected dtype {spec.dtype}, got {str(x.dtype).replace('torch.', '')}")
        bounded = spec.low is not None or spec.high is not None
        if x.numel() == 0 or not (x.is_floating_point() or bounded):
            return
        # both checks read in one host-device synchronisation
        finite, lo, hi = torch.stack([torch.isfinite(x).all().double(), x.min().double(), x.max().double()]).tolist()
        if not finite:
            idx = int(torch.nonzero(~torch.isfinite(x.reshape(len(x), -1)).all(1))[0])
            raise ModalityDataError(f"{who}: example {idx} contains NaN or infinity")
        if (spec.low is not None and lo < spec.low) or (spec.high is not None and hi > spec.high):
            raise ModalityDataError(
                f"{who}: values must lie in [{spec.low}, {spec.high}], got values in [{lo:.4g}, {hi:.4g}]"
            )

    def example_batch(self, n: int, generator: torch.Generator | None = None) -> Batch:
        """A random batch of ``n`` valid examples keyed by :attr:`name`, for validation and conformance tests.

        Default: uniform values over :meth:`data_spec`'s range ([-1, 1] where unbounded). Override when valid
        data has more structure (captions, one-hot vectors, ...).
        """
        spec = self.data_spec()
        lo = spec.low if spec.low is not None else -1.0
        hi = spec.high if spec.high is not None else 1.0
        shape = (n, *spec.shape)
        if spec.torch_dtype.is_floating_point:
            x = lo + (hi - lo) * torch.rand(shape, generator=generator, dtype=torch.float64)
        else:
            x = torch.randint(int(lo), int(hi) + 1, shape, generator=generator)
        return {self.name: x.to(spec.torch_dtype)}

    def latent_shape(self) -> tuple[int, int, int] | None:
        """The latent shape this modality defines when it is the base (its z_0 shape), else None."""
        return None

    def derive(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
               ) -> torch.Tensor | None:
        """Produce this modality's data from the other modalities of ``batch`` (a masked copy of the base image,
        a caption from a label, ...), or None when the data must come with the dataset."""
        return None

    def fit(self, batches: Iterable[Batch]) -> None:
        """Learn data-dependent state before the model is built (e.g. a tokenizer); default: nothing."""

    def empirical_prior(self) -> torch.Tensor | None:
        """Values of this modality kept from its training data, (N, *data shape), or None (the default).

        With joint = "commit", ``generate`` draws a joint sample's value of this modality uniformly from them and
        generates the rest given it, p(y) p(x | y) with p(y) the training data's distribution, instead of
        generating it through the reverse process: for a continuous modality whose head models only a mean (a
        representation), where a value generated in the flow is one the others cannot follow. A kind that keeps
        them learns them in :meth:`fit` and saves them through :meth:`assets`."""
        return None

    def assets(self) -> dict[str, bytes]:
        """Non-tensor state saved beside the weights (e.g. a tokenizer model); restored by :meth:`load_assets`."""
        return {}

    def load_assets(self, assets: Mapping[str, bytes]) -> None:
        """Restore what :meth:`assets` returned."""

    # -- networks ---------------------------------------------------------------------------------
    def build_encoder(self, latent: LatentSpec) -> nn.Module:
        """E_i: a module mapping a batch of data to (B, *latent.shape). Default: the identity."""
        return nn.Identity()

    def encode(self, encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """E_i(x) before scaling: the encoder's output, shaped like the latent part it maps into.

        The model divides an aggregated modality's encodings by their RMS (``MultiTaskModel``'s ``EncodingScale``)
        unless a ``normalize`` option of Config is false, so that the weight schedule alone sets the injection
        strength and a learned encoder cannot shrink it to zero; a modality returns its raw encoding here.
        """
        return encoder(x)

    def build_head(self, latent: LatentSpec, features: FeatureSpec) -> nn.Module | None:
        """The decoder head reading :attr:`head_input` features; None for a base modality."""
        return None

    @abc.abstractmethod
    def loss(self, pred: Prediction, x: torch.Tensor) -> torch.Tensor:
        """-log p_theta(x | z_t) per example, shape (B,), in nats, from the head's prediction ``pred``.

        For the base modality ``pred`` is a :class:`BasePrediction` (the mean and log-variance of z_0 at t = 1).
        """

    def predicted_encoding(self, encoder: nn.Module, pred: Prediction) -> torch.Tensor:
        """The posterior mean E[E_i(x_i) | z_t] as the head's prediction gives it (raw, like :meth:`encode`): what
        the reverse mean mu_theta and every sampler step use (docs/math.md, section 2).

        While the head is unsure this mean is not the encoding of any one value: its RMS is below that of a true
        encoding, and must stay so (never re-normalise it). Default: the encoding of :meth:`sample` with
        ``greedy=True``, exact for a head that predicts the mean of x_i under a linear encoder (an image's mean).
        Override where the expectation differs: a label takes sum_k p_k E(k) under the head's probabilities.
        """
        return self.encode(encoder, self.sample(pred, greedy=True))

    def temper(self, pred: Prediction, temperature: float) -> Prediction:
        """The prediction with its categorical probabilities at ``temperature`` (softmax(logits / temperature)).

        Used by ``generate(..., encoding_temperature=...)``: below 1 the reverse process commits to one value
        earlier instead of following the probability-weighted mixture of encodings. Default: a ConfigError, for
        modalities whose predictions are not categorical; categorical ones (label, text) override it.
        """
        raise ConfigError(f"modality {self.name!r} ({self.kind}) has no encoding temperature: its predictions are not "
                          "categorical (it does not override Modality.temper)")

    def observed_base(self, x: torch.Tensor, base: Modality) -> tuple[torch.Tensor, torch.Tensor] | None:
        """What this modality's data ``x`` shows of the base's data as it is: (values, known), ``values`` shaped
        like a batch of the base's data and ``known`` a bool mask broadcasting to it, True where the base's value
        is the one in ``values``; None (the default) where it shows no base value as it is (a label, a caption).

        Generation given this modality then keeps the known values in every step's base estimate
        (``generate(..., keep_observed=True)``, the default; estimate.py), so that a restoration keeps what it was
        given and fills in the rest around it. A masked image returns its unhidden pixels.
        """
        return None

    @abc.abstractmethod
    def sample(self, pred: Prediction, *, greedy: bool = False, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """Turn a head prediction into data matching :meth:`data_spec` (``greedy``: the mode, else a draw)."""

    # -- showing, parsing and scoring values (the defaults live in mtd_core/values.py) ----------------------
    def class_names(self) -> list[str] | None:
        """Display names of the classes when this modality's values are class indices, else None (the default).

        Sample grids and ``mtd sample --given`` use them; without them, a dataset's class names are used where
        their number matches the modality's range.
        """
        return None

    def describe(self, value: torch.Tensor, class_names: Sequence[str] | None = None) -> str | None:
        """One example (no batch dimension) as a short text for sample grids and ``mtd sample``, or None when it is
        drawn instead (an image). Default: :func:`mtd_core.values.describe` (class names, or a few numbers)."""
        return values.describe(self, value, class_names)

    def parse(self, text: str, class_names: Sequence[str] | None = None) -> BatchValue:
        """Examples from a command-line string (``mtd sample --given NAME=TEXT``): a batch, one row per example,
        in a form :func:`~mtd_core.sampling.generate` takes as given data (a tensor, or raw values that
        :meth:`derive` turns into one). Default: :func:`mtd_core.values.parse` (.npy, image files, class names,
        numbers); raises ModalityDataError naming the modality and what it accepts."""
        return values.parse(self, text, class_names)

    def readout_scores(self, predicted: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example scores of this modality read out from the base (``predicted``: the head's greedy sample)
        against the truth ``x``; ``mtd eval`` reports their means. Default: :func:`mtd_core.values.readout_scores`
        (accuracy for integer data, mean squared error for float data)."""
        return values.readout_scores(self, predicted, x)
