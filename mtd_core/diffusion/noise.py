"""Noise schedules beta_t, alpha_t = 1 - beta_t and abar_t = prod_{s<=t} alpha_s (docs/math.md, section 1).

Every array is float64 and indexed by the paper's t directly: index 0 is t = 0 (beta_0 = 0,
alpha_0 = abar_0 = 1) and index T is the last step, so ``abar[t]`` reads as abar_t.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence

import attrs
import torch

from mtd_core.errors import ScheduleError
from mtd_core.types import ConfigDict, ConfigMapping

KINDS = ("linear", "cosine", "custom")


def _linear_betas(T: int, beta_start: float, beta_end: float) -> torch.Tensor:
    # DDPM's linear schedule, rescaled so that T != 1000 keeps the same total noise (iDDPM, eq. 8 footnote).
    scale = 1000.0 / T
    return torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64)


def _cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    # iDDPM's cosine schedule: abar(t) = cos^2(((t/T + s) / (1 + s)) * pi / 2), betas clipped at max_beta.
    t = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


@attrs.frozen(eq=False)
class NoiseSchedule:
    """The variance schedule of the forward process.

    Args:
        betas: beta_1..beta_T as a 1-D float64 tensor, each in (0, 1).
        kind: how the betas were made ("linear", "cosine" or "custom"); kept for round-tripping.
        params: the constructor arguments of ``kind`` (for round-tripping).

    Build one with :meth:`linear`, :meth:`cosine`, :meth:`custom` or :meth:`from_config`.
    """

    betas: torch.Tensor
    kind: str = "custom"
    params: ConfigDict = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        b = self.betas
        if not isinstance(b, torch.Tensor) or b.ndim != 1 or b.numel() < 1:
            raise ScheduleError(f"noise schedule: betas must be a non-empty 1-D tensor, got {describe_value(b)}")
        if not torch.isfinite(b).all() or (b <= 0).any() or (b >= 1).any():
            bad = int(torch.nonzero(~(torch.isfinite(b) & (b > 0) & (b < 1)))[0]) + 1
            raise ScheduleError(
                f"noise schedule: every beta_t must lie in (0, 1); beta_{bad} = {float(b[bad - 1])!r}"
            )
        object.__setattr__(self, "betas", b.to(torch.float64))
        if self.kind not in KINDS:
            raise ScheduleError(f"noise schedule: unknown kind {self.kind!r}; expected one of {KINDS}")
        if self.kind == "custom" and "betas" not in self.params:
            # built directly from betas: keep them so that to_config() round-trips
            object.__setattr__(self, "params", {**self.params, "betas": self.betas.tolist()})

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
        """DDPM's linear schedule (Ho et al. 2020), beta from ``beta_start`` to ``beta_end`` at T = 1000."""
        _check_T(T)
        _check_number("linear", "beta_start", beta_start, "in (0, 1)", lambda v: 0.0 < v < 1.0)
        _check_number("linear", "beta_end", beta_end, "in (0, 1)", lambda v: 0.0 < v < 1.0)
        top = 1000.0 / T * max(beta_start, beta_end)
        if top >= 1.0:
            raise ScheduleError(
                f"noise schedule 'linear': betas are rescaled by 1000/T = {1000.0 / T:g} so that every T keeps "
                f"DDPM's total noise; with T = {T}, beta_start = {beta_start:g} and beta_end = {beta_end:g} the "
                f"largest beta_t becomes {top:g}, but every beta_t must lie in (0, 1): use "
                f"T > {math.floor(1000.0 * max(beta_start, beta_end))}, a beta_end below {T / 1000.0:g}, "
                "or NoiseSchedule.cosine / NoiseSchedule.custom"
            )
        return cls(_linear_betas(T, beta_start, beta_end), "linear",
                   {"T": T, "beta_start": beta_start, "beta_end": beta_end})

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008) -> NoiseSchedule:
        """The cosine schedule of Nichol & Dhariwal (2021), eq. 17."""
        _check_T(T)
        _check_number("cosine", "s", s, ">= 0", lambda v: v >= 0.0)
        return cls(_cosine_betas(T, s), "cosine", {"T": T, "s": s})

    @classmethod
    def custom(cls, betas: Sequence[float] | torch.Tensor) -> NoiseSchedule:
        """Any beta_1..beta_T supplied by the user (a list or 1-D tensor of real numbers)."""
        b = _betas_tensor(betas)
        return cls(b, "custom", {"betas": b.tolist()})

    @classmethod
    def from_config(cls, config: ConfigMapping, kinds: Mapping[str, Callable[..., NoiseSchedule]] | None = None
                    ) -> NoiseSchedule:
        """Inverse of :meth:`to_config`. ``kinds``: kind -> factory (default: the built-in KINDS; a task set
        passes the registry's noise schedules, plugins' included)."""
        config = dict(config)
        table = kinds if kinds is not None else {k: getattr(cls, k) for k in KINDS}
        kind = config.pop("kind", "linear")
        if not isinstance(kind, str) or kind not in table:
            raise ScheduleError(f"noise schedule: unknown kind {kind!r}; expected one of {sorted(table)}")
        try:
            return table[kind](**config)
        except (TypeError, OverflowError) as e:  # unknown or missing arguments, or a plugin's own failure
            raise ScheduleError(f"noise schedule {kind!r}: bad arguments {config!r}: {type(e).__name__}: {e}"
                                ) from None

    def to_config(self) -> ConfigDict:
        """A plain dict that :meth:`from_config` turns back into an equal schedule."""
        return {"kind": self.kind, **self.params}

    # -- derived quantities, indexed by t = 0..T -----------------------------------------------
    @property
    def T(self) -> int:
        """The number of diffusion steps."""
        return int(self.betas.numel())

    @property
    def beta(self) -> torch.Tensor:
        """beta_t for t = 0..T (beta_0 = 0)."""
        return torch.cat([self.betas.new_zeros(1), self.betas])

    @property
    def alpha(self) -> torch.Tensor:
        """alpha_t = 1 - beta_t for t = 0..T."""
        return 1 - self.beta

    @property
    def abar(self) -> torch.Tensor:
        """abar_t = prod_{s<=t} alpha_s for t = 0..T (abar_0 = 1)."""
        return torch.cumprod(self.alpha, 0)

    @property
    def beta_tilde(self) -> torch.Tensor:
        """The posterior variance beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t), t = 0..T (0 at t <= 1)."""
        abar = self.abar
        out = torch.zeros_like(abar)
        out[1:] = self.beta[1:] * (1 - abar[:-1]) / (1 - abar[1:])
        return out

    def respace(self, timesteps: Sequence[int] | torch.Tensor) -> NoiseSchedule:
        """The schedule of the jumps between ``timesteps`` (strictly increasing, in 1..T).

        With t'_k the k-th kept step, alpha'_k = abar_{t'_k} / abar_{t'_{k-1}}, so that the respaced
        process has the same marginals abar at the kept steps (DDIM / iDDPM respacing).
        """
        ts = _check_timesteps(timesteps, self.T)
        keep = torch.cat([ts.new_zeros(1), ts])
        abar = self.abar[keep]
        ratio = abar[1:] / abar[:-1]  # alpha'_k
        tiny = ratio < torch.finfo(torch.float64).eps
        if tiny.any():  # beta'_k = 1 - alpha'_k would round to 1 (or lose all its precision)
            k = int(torch.nonzero(tiny)[0])
            raise ScheduleError(
                f"respacing: abar_t falls from {float(abar[k]):.3g} at t = {int(keep[k])} to {float(abar[k + 1]):.3g} "
                f"at t = {int(keep[k + 1])}; the jump's alpha' = {float(ratio[k]):.3g} is below float64 resolution, "
                "so its beta' would round to 1: keep more timesteps in that range or use a less noisy schedule"
            )
        return NoiseSchedule.custom(1 - ratio)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NoiseSchedule) and torch.equal(self.betas, other.betas)

    def __hash__(self) -> int:
        return hash(tuple(self.betas.tolist()))


MAX_T = 100_000
"""The most diffusion steps a schedule may have (its tables are float64 vectors of T + 1 values, gathered per step;
DDPM uses 1000)."""


def _check_number(kind: str, name: str, v: object, expected: str, ok: Callable[[float], bool]) -> None:
    """A ScheduleError naming ``name`` of schedule ``kind`` unless ``v`` is a finite real number (not a bool)
    for which ``ok`` holds."""
    if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and ok(float(v))):
        raise ScheduleError(f"noise schedule {kind!r}: {name} must be a finite number {expected}, got {describe_value(v)}")


def _betas_tensor(betas: object) -> torch.Tensor:
    """The betas of a custom schedule as a 1-D float64 tensor; anything but real numbers is a ScheduleError
    (their range is checked by NoiseSchedule itself)."""
    if isinstance(betas, torch.Tensor):
        ok = betas.ndim == 1 and not betas.is_complex() and betas.dtype != torch.bool
    else:
        ok = isinstance(betas, (list, tuple)) and all(
            isinstance(x, numbers.Real) and not isinstance(x, bool) for x in betas)
    if not ok:
        raise ScheduleError(f"noise schedule 'custom': betas must be a list or 1-D tensor of numbers in (0, 1), "
                            f"got {describe_value(betas)}")
    return torch.as_tensor(betas, dtype=torch.float64).detach()


def describe_value(v: object) -> str:
    """A one-line description of a value for a message (a tensor's repr spans lines)."""
    if isinstance(v, torch.Tensor):
        return f"a tensor of shape {tuple(v.shape)} and dtype {v.dtype}"
    return f"{v!r:.80}"


def _check_T(T: int) -> None:
    if not isinstance(T, int) or isinstance(T, bool) or not 1 <= T <= MAX_T:
        raise ScheduleError(f"noise schedule: T must be an integer in 1..{MAX_T}, got {T!r}")


def _check_timesteps(timesteps: Sequence[int] | torch.Tensor, T: int) -> torch.Tensor:
    raw = torch.as_tensor(timesteps).flatten()
    if raw.dtype == torch.bool or (raw.is_floating_point() and not torch.equal(raw, raw.round())):
        raise ScheduleError(f"respacing: timesteps must be integers, got {raw.tolist()[:20]}")
    ts = raw.to(torch.long)
    if ts.numel() == 0 or ts[0] < 1 or ts[-1] > T or (ts[1:] <= ts[:-1]).any():
        raise ScheduleError(
            f"respacing: timesteps must be strictly increasing integers in 1..{T}, got {ts.tolist()[:20]}"
        )
    return ts


RESPACINGS = ("uniform", "quad", "leading", "logsnr", "karras")
KARRAS_RHO = 7.0  # EDM's rho (Karras et al. 2022, eq. 5)


def respaced_timesteps(T: int, steps: int, kind: str = "uniform", abar: torch.Tensor | None = None) -> torch.Tensor:
    """``steps`` strictly increasing timesteps in 1..T, always including T.

    Kinds: "uniform" (evenly spaced from 1 to T), "quad" (quadratic from 1 to T, denser at small t), "leading"
    (every T // steps from 1, so that the first reverse step is below T: diffusers' DDIMScheduler default), and two
    kinds placed by the noise level, which need ``abar`` (abar_t for t = 0..T): "logsnr" (evenly spaced in the
    half log-SNR lam_t = log(sqrt(abar_t) / sqrt(1 - abar_t))) and "karras" (EDM's sigma_i^(1/rho) evenly spaced,
    sigma_t = sqrt((1 - abar_t) / abar_t), rho = 7; Karras et al. 2022, eq. 5). Both map each target noise level to
    the nearest integer t between 1 and T; where two targets round to the same t, neighbouring steps move by one
    so that every step stays distinct.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= T:
        raise ScheduleError(f"respacing: steps must be in 1..{T}, got {steps}")
    if kind == "leading":
        return torch.arange(steps, dtype=torch.long) * (T // steps) + 1
    if kind in ("logsnr", "karras"):
        return _by_noise_level(T, steps, kind, abar)
    if kind == "uniform":
        ts = torch.linspace(T, 1, steps, dtype=torch.float64).round().long().flip(0)
    elif kind == "quad":
        ts = (torch.linspace(math.sqrt(T), 1, steps, dtype=torch.float64) ** 2).round().long().flip(0)
    else:
        raise ScheduleError(f"respacing: spacing must be one of {list(RESPACINGS)}, got {kind!r}")
    ts = torch.unique(ts)
    if ts.numel() != steps:  # rounding merged a few steps: fall back to integer spacing
        ts = torch.unique(torch.linspace(1, T, steps).round().long())
    return ts


def _by_noise_level(T: int, steps: int, kind: str, abar: torch.Tensor | None) -> torch.Tensor:
    """The "logsnr" and "karras" spacings of :func:`respaced_timesteps`."""
    if abar is None or abar.shape != (T + 1,):
        raise ScheduleError(f"respacing {kind!r}: needs the schedule's abar_t for t = 0..{T}")
    ab = abar[1:].to(torch.float64)
    lam = 0.5 * (torch.log(ab) - torch.log1p(-ab))  # decreasing in t
    if kind == "logsnr":
        target = torch.linspace(float(lam[-1]), float(lam[0]), steps, dtype=torch.float64)
    else:
        sigma = torch.exp(-lam)
        lo, hi = float(sigma[0]) ** (1 / KARRAS_RHO), float(sigma[-1]) ** (1 / KARRAS_RHO)
        target = -KARRAS_RHO * torch.log(torch.linspace(hi, lo, steps, dtype=torch.float64))
    # nearest t (1-based) for each target log-SNR; targets run from t = T down to t = 1
    nearest = (lam[None, :] - target[:, None]).abs().argmin(1) + 1
    ts = nearest.flip(0).tolist()  # increasing in t, ends at T
    for i in range(len(ts) - 2, -1, -1):  # distinct: move colliding steps down ...
        ts[i] = min(ts[i], ts[i + 1] - 1)
    for i in range(len(ts)):  # ... and back up where that left 1..T (steps <= T keeps the last at T)
        ts[i] = max(ts[i], ts[i - 1] + 1 if i else 1)
    return torch.tensor(ts, dtype=torch.long)
