"""Aggregation weight schedules w_t^(i) and their cumulative coefficients lambda_t^(i) (docs/math.md, section 2).

The paper leaves w_t open. What matters for sampling is lambda_T: z_T = sqrt(abar_T) z_0 + sum_i lambda_T^(i)
E_i(x_i) + sqrt(1 - abar_T) eps must be close to N(0, I), so every schedule is checked at construction of the
forward process and a lambda_T above its tolerance raises :class:`~mtd_core.errors.ScheduleError`.

A schedule is defined either by w_t (:class:`ConstantWeight`, :class:`CustomWeight`, :class:`ZeroWeight`) or by a
target lambda_t profile (:class:`WindowedLambda`, :class:`CustomLambda`); the two are related exactly by

    lambda_0 = 0,  lambda_t = sqrt(alpha_t) (lambda_{t-1} + w_t)   <=>   w_t = lambda_t / sqrt(alpha_t) - lambda_{t-1}.
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import attrs
import torch

from mtd_core.diffusion.noise import NoiseSchedule, describe_value
from mtd_core.errors import ScheduleError
from mtd_core.types import ConfigDict

DEFAULT_LAMBDA_T_TOL = 1e-2


def lambda_from_w(w: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """lambda_t = sqrt(alpha_t) (lambda_{t-1} + w_t), lambda_0 = 0; ``w`` and ``alpha`` indexed t = 0..T."""
    lam = torch.zeros_like(w)
    sa = alpha.sqrt()
    for t in range(1, w.numel()):
        lam[t] = sa[t] * (lam[t - 1] + w[t])
    return lam


def w_from_lambda(lam: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """w_t = lambda_t / sqrt(alpha_t) - lambda_{t-1} (exact inverse of :func:`lambda_from_w`); w_0 = 0."""
    w = torch.zeros_like(lam)
    w[1:] = lam[1:] / alpha[1:].sqrt() - lam[:-1]
    return w


@attrs.frozen
class ResolvedWeights:
    """w_t and lambda_t of one modality on one noise schedule, float64, indexed t = 0..T."""

    w: torch.Tensor
    lam: torch.Tensor


@attrs.frozen
class WeightSchedule(abc.ABC):
    """How strongly one modality is injected into z_t at each step.

    Subclasses define :meth:`_w_or_lambda`; :meth:`resolve` turns it into (w, lambda) on a noise schedule and
    validates lambda_T. ``lambda_T_tol`` is the largest |lambda_T| accepted (encodings have unit RMS, so it is
    the largest mean shift of z_T away from N(0, I) per unit of signal).
    """

    kind: ClassVar[str]
    defines: ClassVar[str]  # "w" or "lambda"
    lambda_T_tol: float = attrs.field(default=DEFAULT_LAMBDA_T_TOL, kw_only=True)

    def __attrs_post_init__(self) -> None:
        """Every field annotated ``float`` (a subclass's, a plugin's included) must be a finite real number; a
        subclass with its own checks calls this first."""
        for field in attrs.fields(type(self)):
            if field.type in ("float", float):
                _check_number(self.kind, field.name, getattr(self, field.name))
        if self.lambda_T_tol < 0:
            raise ScheduleError(f"{self.kind} weight schedule: lambda_T_tol must be >= 0, got {self.lambda_T_tol!r}")

    @abc.abstractmethod
    def _w_or_lambda(self, noise: NoiseSchedule) -> torch.Tensor:
        """w_t or lambda_t (per :attr:`defines`) for t = 0..T, float64; index 0 is ignored."""

    def resolve(self, noise: NoiseSchedule, modality: str = "<unnamed>") -> ResolvedWeights:
        """w and lambda on ``noise``; raises ScheduleError naming ``modality`` if lambda_T is too large."""
        v = self._w_or_lambda(noise).to(torch.float64)
        if v.shape != (noise.T + 1,):
            raise ScheduleError(
                f"modality {modality!r}: weight schedule {self.kind!r} has {v.numel() - 1} steps, "
                f"the noise schedule has T = {noise.T}"
            )
        if not torch.isfinite(v).all():
            raise ScheduleError(f"modality {modality!r}: weight schedule {self.kind!r} has non-finite values")
        v = v.clone()
        v[0] = 0.0
        if self.defines == "w":
            w, lam = v, lambda_from_w(v, noise.alpha)
        else:
            lam, w = v, w_from_lambda(v, noise.alpha)
        lam_T = float(lam[-1])
        if abs(lam_T) > self.lambda_T_tol:
            raise ScheduleError(
                f"modality {modality!r}: weight schedule {self.to_config()} gives lambda_T = {lam_T:.4g} "
                f"(tolerance {self.lambda_T_tol:g}): z_T would not be close to N(0, I), so sampling from N(0, I) "
                "would be wrong; use a schedule whose lambda_t returns to 0 at T, e.g. WindowedLambda(peak=..., "
                "end=0.9)"
            )
        return ResolvedWeights(w=w, lam=lam)

    def to_config(self) -> ConfigDict:
        """A plain dict that :func:`weight_schedule_from_config` turns back into an equal schedule."""
        # lists, not tuples: the dict must equal itself after a JSON/TOML round trip
        fields = attrs.asdict(self, value_serializer=lambda _inst, _field, v: list(v) if isinstance(v, tuple) else v)
        return {"kind": self.kind, **fields}


@attrs.frozen
class ZeroWeight(WeightSchedule):
    """w_t = 0: the modality is not injected (reduces MT-Diffusion to DDPM for the base)."""

    kind: ClassVar[str] = "zero"
    defines: ClassVar[str] = "w"

    def _w_or_lambda(self, noise: NoiseSchedule) -> torch.Tensor:
        return torch.zeros(noise.T + 1, dtype=torch.float64)


@attrs.frozen
class ConstantWeight(WeightSchedule):
    """w_t = ``value`` at every step. Any nonzero value fails validation on common schedules (lambda_T >> 0);
    it exists to reproduce that failure and for custom short schedules."""

    kind: ClassVar[str] = "constant"
    defines: ClassVar[str] = "w"
    value: float = 1.0

    def _w_or_lambda(self, noise: NoiseSchedule) -> torch.Tensor:
        return torch.full((noise.T + 1,), float(self.value), dtype=torch.float64)


@attrs.frozen
class WindowedLambda(WeightSchedule):
    """A raised-cosine lambda_t profile: 0 outside [start, end], rising to ``peak`` at ``center``.

    Args:
        peak: lambda at the centre (the injected signal's amplitude relative to unit-RMS encodings).
        start: where the window opens, as a fraction of T (lambda_t = 0 for t/T <= start).
        center: where lambda_t peaks, as a fraction of T, strictly between start and end.
        end: where the window closes (lambda_t = 0 for t/T >= end); end <= 1 makes lambda_T = 0 exactly.
    """

    kind: ClassVar[str] = "windowed"
    defines: ClassVar[str] = "lambda"
    peak: float = 1.0
    start: float = 0.05
    center: float = 0.4
    end: float = 0.9

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        _check_window("windowed", self.start, self.center, self.end)

    def _w_or_lambda(self, noise: NoiseSchedule) -> torch.Tensor:
        return self.peak * raised_cosine(noise.T, self.start, self.center, self.end)


def raised_cosine(T: int, start: float, center: float, end: float) -> torch.Tensor:
    """The window u_t, t = 0..T: 0 for t/T <= start and t/T >= end, sin^2 rising to 1 at ``center``, cos^2 falling."""
    u = torch.arange(T + 1, dtype=torch.float64) / T
    rise = torch.sin(0.5 * math.pi * (u - start) / (center - start)) ** 2
    fall = torch.cos(0.5 * math.pi * (u - center) / (end - center)) ** 2
    win = torch.where(u <= center, rise, fall)
    return torch.where((u <= start) | (u >= end), torch.zeros_like(u), win)


def _check_window(kind: str, start: float, center: float, end: float) -> None:
    if not 0.0 <= start < center < end <= 1.0:
        raise ScheduleError(f"{kind} weight schedule: need 0 <= start < center < end <= 1, got "
                            f"start={start}, center={center}, end={end}")


@attrs.frozen
class RatioWindow(WeightSchedule):
    """lambda_t = rho * sqrt(abar_t) * u_t: the injected part never exceeds ``rho`` times the base's signal.

    ``u_t`` is the raised-cosine window of :class:`WindowedLambda` (peak 1). The ratio lambda_t / sqrt(abar_t) of
    an aggregated encoding (unit RMS) to the base's signal sqrt(abar_t) z_0 is what decides how far an error of
    the predicted encoding is amplified in the base estimate z0_hat (docs/math.md, section 2), so this family bounds
    it by construction: max_t lambda_t / sqrt(abar_t) = rho (at the window's centre). lambda_T = 0 when end <= 1.

    Args:
        rho: the bound on lambda_t / sqrt(abar_t), in (0, inf).
        start, center, end: the window, as fractions of T (see :class:`WindowedLambda`).
    """

    kind: ClassVar[str] = "ratio"
    defines: ClassVar[str] = "lambda"
    rho: float = 1.0
    start: float = 0.05
    center: float = 0.4
    end: float = 0.9

    def __attrs_post_init__(self) -> None:
        if isinstance(self.rho, bool) or not isinstance(self.rho, (int, float)) or not 0.0 < self.rho < math.inf:
            raise ScheduleError(f"ratio weight schedule: rho must lie in (0, inf), got {self.rho!r}")
        super().__attrs_post_init__()
        _check_window("ratio", self.start, self.center, self.end)

    def _w_or_lambda(self, noise: NoiseSchedule) -> torch.Tensor:
        return self.rho * noise.abar.sqrt() * raised_cosine(noise.T, self.start, self.center, self.end)


def peak_ratio(lam: torch.Tensor, abar: torch.Tensor) -> float:
    """max_t |lambda_t| / sqrt(abar_t) over t = 1..T: the largest size of an aggregated encoding's part of z_t
    relative to the base's signal (docs/math.md, section 2)."""
    return float((lam[1:].abs() / abar[1:].sqrt()).max()) if lam.numel() > 1 else 0.0


def _check_number(kind: str, name: str, v: object) -> None:
    """A ScheduleError naming ``name`` and the schedule ``kind`` unless ``v`` is a finite real number (not a bool)."""
    if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)):
        raise ScheduleError(f"{kind} weight schedule: {name} must be a finite number, got {describe_value(v)}")


def _floats(kind: str, v: object) -> tuple[float, ...]:
    """A list or 1-D tensor of finite schedule values as a tuple of floats; anything else is a ScheduleError."""
    items: list[object] | None = None
    if isinstance(v, torch.Tensor):
        items = v.tolist() if v.ndim == 1 and v.dtype != torch.bool and not v.is_complex() else None
    elif isinstance(v, (list, tuple)):
        items = list(v)
    out: list[float] = []
    for x in items if items is not None else [None]:
        if not isinstance(x, numbers.Real) or isinstance(x, bool) or not math.isfinite(x):
            raise ScheduleError(f"{kind} weight schedule: values must be a list or 1-D tensor of finite numbers, "
                                f"got {describe_value(v)}")
        out.append(float(x))
    return tuple(out)


def _w_values(v: Sequence[float] | torch.Tensor) -> tuple[float, ...]:
    return _floats("custom_w", v)


def _lambda_values(v: Sequence[float] | torch.Tensor) -> tuple[float, ...]:
    return _floats("custom_lambda", v)


@attrs.frozen
class CustomWeight(WeightSchedule):
    """w_1..w_T given explicitly (a list or 1-D tensor of length T)."""

    kind: ClassVar[str] = "custom_w"
    defines: ClassVar[str] = "w"
    values: tuple[float, ...] = attrs.field(converter=_w_values)

    def _w_or_lambda(self, noise: NoiseSchedule) -> torch.Tensor:
        return torch.tensor((0.0, *self.values), dtype=torch.float64)


@attrs.frozen
class CustomLambda(WeightSchedule):
    """lambda_1..lambda_T given explicitly (a list or 1-D tensor of length T); w follows exactly."""

    kind: ClassVar[str] = "custom_lambda"
    defines: ClassVar[str] = "lambda"
    values: tuple[float, ...] = attrs.field(converter=_lambda_values)

    def _w_or_lambda(self, noise: NoiseSchedule) -> torch.Tensor:
        return torch.tensor((0.0, *self.values), dtype=torch.float64)


SCHEDULES: dict[str, type[WeightSchedule]] = {
    c.kind: c for c in (ZeroWeight, ConstantWeight, WindowedLambda, RatioWindow, CustomWeight, CustomLambda)
}


def weight_schedule_from_config(config: ConfigDict | WeightSchedule, modality: str = "<unnamed>",
                                kinds: Mapping[str, Callable[..., WeightSchedule]] | None = None) -> WeightSchedule:
    """Build a schedule from ``{"kind": ..., **params}`` (or pass a schedule through). ``kinds``: kind -> class
    (default: the built-in SCHEDULES; a task set passes the registry's weight schedules, plugins' included)."""
    if isinstance(config, WeightSchedule):
        return config
    if not isinstance(config, dict) or "kind" not in config:
        raise ScheduleError(f"modality {modality!r}: a weight schedule config needs a 'kind' key, got {config!r}")
    params = dict(config)
    kind = params.pop("kind")
    table = SCHEDULES if kinds is None else kinds
    if not isinstance(kind, str) or kind not in table:
        raise ScheduleError(f"modality {modality!r}: unknown weight schedule {kind!r}; expected one of {sorted(table)}")
    try:
        return table[kind](**params)
    except ScheduleError as e:  # the schedule's own validation does not know which modality it belongs to
        raise ScheduleError(f"modality {modality!r}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ScheduleError(f"modality {modality!r}: weight schedule {kind!r}: {e}") from None


__all__ = [
    "ConstantWeight",
    "CustomLambda",
    "CustomWeight",
    "RatioWindow",
    "ResolvedWeights",
    "WeightSchedule",
    "WindowedLambda",
    "ZeroWeight",
    "lambda_from_w",
    "peak_ratio",
    "raised_cosine",
    "w_from_lambda",
    "weight_schedule_from_config",
]
