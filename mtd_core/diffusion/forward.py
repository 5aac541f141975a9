"""The forward aggregation process of MT-Diffusion and its closed forms (docs/math.md, sections 2-4).

Notation: z_0 is the base modality's encoding (or 0 when there is no base), E_i(x_i) the encodings of the
aggregated modalities (a mapping name -> tensor shaped like z), w_t^(i) and lambda_t^(i) their weights.

    kernel     q(z_t | z_{t-1}, X)   = N(sqrt(alpha_t) (z_{t-1} + a_t), (1 - alpha_t) I),  a_t = sum_i w_t^(i) E_i(x_i)
    marginal   q(z_t | z_0, X)       = N(sqrt(abar_t) z_0 + sum_i lambda_t^(i) E_i(x_i), (1 - abar_t) I)
    posterior  q(z_{t-1} | z_t, z_0, X) = N(mu~_t, beta~_t I)
               mu~_t = (1 / sqrt(alpha_t)) (z_t - beta_t / sqrt(1 - abar_t) eps) - a_t
    reverse    mu_theta = (1 / sqrt(alpha_t)) (z_t - beta_t / sqrt(1 - abar_t) eps_theta) - sum_i w_t^(i) E_i(xhat_i)

All coefficients are tabulated once in float64 (index t = 0..T), copied once to each device they are used on, and
cast to the data's dtype when gathered, so a training or sampling step makes no host-to-device copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mtd_core.diffusion.noise import NoiseSchedule, _check_timesteps
from mtd_core.diffusion.weights import WeightSchedule, w_from_lambda
from mtd_core.errors import ModalityDataError, ScheduleError

Encodings = Mapping[str, torch.Tensor]


class ForwardProcess:
    """The noise schedule plus every aggregated modality's (w_t, lambda_t), with the paper's formulas.

    Args:
        noise: the variance schedule beta_t.
        weights: aggregated modality name -> its weight schedule. Each is resolved on ``noise`` and its
            lambda_T checked (a ScheduleError names the modality if it is too large). The order of the
            mapping is irrelevant to every result.
    """

    def __init__(self, noise: NoiseSchedule, weights: Mapping[str, WeightSchedule] | None = None) -> None:
        weights = dict(weights or {})
        resolved = {name: ws.resolve(noise, name) for name, ws in weights.items()}
        w = torch.stack([r.w for r in resolved.values()]) if resolved else torch.zeros(0, noise.T + 1, dtype=torch.float64)
        lam = torch.stack([r.lam for r in resolved.values()]) if resolved else torch.zeros_like(w)
        self._init(noise, tuple(resolved), w, lam, torch.arange(noise.T + 1))

    def _init(self, noise: NoiseSchedule, names: tuple[str, ...], w: torch.Tensor, lam: torch.Tensor,
              timesteps: torch.Tensor) -> None:
        self.noise = noise
        self.names = names
        self.w = w  # (N, T+1) float64: w_t^(i)
        self.lam = lam  # (N, T+1) float64: lambda_t^(i)
        self.timesteps = timesteps  # (T+1,) the original t of each step (differs from arange after respacing)
        self.beta = noise.beta
        self.alpha = noise.alpha
        self.abar = noise.abar
        self.beta_tilde = noise.beta_tilde
        self._on_device: dict[torch.device, dict[str, torch.Tensor]] = {}

    def _coefficients(self) -> dict[str, torch.Tensor]:
        """Every coefficient the formulas gather, as (T+1,) tables ((N, T+1) for the per-modality ones)."""
        beta, alpha, abar = self.beta, self.alpha, self.abar
        one_m_abar = 1 - abar
        ab_prev = abar[:-1]
        zero = abar.new_zeros(1)
        ce = torch.zeros_like(self.lam)
        ce[:, 1:] = beta[1:] * self.lam[:, 1:] / (alpha[1:].sqrt() * one_m_abar[1:]) - self.w[:, 1:]
        return {
            "w": self.w, "lam": self.lam, "beta": beta, "beta_tilde": self.beta_tilde, "abar": abar,
            "sqrt_alpha": alpha.sqrt(), "one_m_alpha": 1 - alpha, "sqrt_abar": abar.sqrt(), "one_m_abar": one_m_abar,
            # the posterior mean's coefficients of z_0, z_t and each E_i (posterior)
            "c0": torch.cat([zero, ab_prev.sqrt() * beta[1:] / one_m_abar[1:]]),
            "ct": torch.cat([zero, alpha[1:].sqrt() * (1 - ab_prev) / one_m_abar[1:]]),
            "ce": ce,
            # beta_t / sqrt(1 - abar_t): the eps coefficient of the posterior mean (posterior_mean_eps)
            "eps_coef": torch.cat([zero, beta[1:] / one_m_abar[1:].sqrt()]),
        }

    def _tables(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The coefficient tables on ``device``, computed and copied on first use there."""
        tables = self._on_device.get(device)
        if tables is None:
            tables = {k: v.to(device) for k, v in self._coefficients().items()}
            self._on_device[device] = tables
        return tables

    @property
    def T(self) -> int:
        """Number of steps of this (possibly respaced) process."""
        return self.noise.T

    # -- respacing --------------------------------------------------------------------------------
    def respace(self, timesteps: Sequence[int] | torch.Tensor) -> ForwardProcess:
        """The process that jumps between ``timesteps`` (strictly increasing, in 1..T).

        Marginals at kept steps are unchanged: abar'_k = abar_{t_k}, lambda'_k = lambda_{t_k}, and the jump's
        weights follow exactly from w'_k = lambda'_k / sqrt(alpha'_k) - lambda'_{k-1}. Indices of the returned
        process are 0..K; :attr:`timesteps` maps them back to the original t (what the network is fed).
        """
        ts = _check_timesteps(timesteps, self.T)
        keep = torch.cat([ts.new_zeros(1), ts])
        noise = self.noise.respace(ts)
        lam = self.lam[:, keep]
        w = torch.stack([w_from_lambda(row, noise.alpha) for row in lam]) if len(self.names) else lam.clone()
        out = ForwardProcess.__new__(ForwardProcess)
        out._init(noise, self.names, w, lam, self.timesteps[keep])
        return out

    # -- helpers ------------------------------------------------------------------------------------
    def _t(self, t: torch.Tensor | int, z: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=z.device)
        if t.dtype == torch.bool or (t.is_floating_point() and not torch.equal(t, t.round())):
            raise ScheduleError(f"t must hold integer timesteps, got {t.flatten().tolist()[:10]}")
        t = t.long()
        if t.ndim == 0:
            t = t.expand(z.shape[0])
        if t.shape != (z.shape[0],):
            raise ScheduleError(
                f"t must be a scalar or have shape ({z.shape[0]},) (the batch size), got {tuple(t.shape)}"
            )
        if bool(((t < 0) | (t > self.T)).any()):
            raise ScheduleError(f"t must lie in 0..{self.T}, got values in [{int(t.min())}, {int(t.max())}]")
        return t

    def _gather(self, name: str, t: torch.Tensor, z: torch.Tensor, i: int | None = None) -> torch.Tensor:
        """Table ``name`` (row ``i`` of a per-modality table) at t, broadcast against z (batch first), in z's dtype."""
        v = self._tables(z.device)[name]
        v = v if i is None else v[i]
        return v[t].to(z.dtype).reshape(-1, *([1] * (z.ndim - 1)))

    def check_encodings(self, enc: Encodings, like: torch.Tensor) -> None:
        """Raise a ModalityDataError unless ``enc`` has exactly this process's modalities, each shaped like z."""
        missing = [n for n in self.names if n not in enc]
        extra = [n for n in enc if n not in self.names]
        if missing or extra:
            raise ModalityDataError(
                f"encodings do not match the aggregated modalities {list(self.names)}: "
                f"missing {missing}, unexpected {extra}"
            )
        for n in self.names:
            e = enc[n]
            if e.shape != like.shape:
                raise ModalityDataError(
                    f"modality {n!r}: encoding has shape {tuple(e.shape)}, expected the latent shape {tuple(like.shape)}"
                )

    def _weighted(self, name: str, enc: Encodings, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """sum_i table[name][i, t] E_i: a per-modality coefficient applied to every encoding."""
        self.check_encodings(enc, like)
        out = torch.zeros_like(like)
        for i, n in enumerate(self.names):
            out = out + self._gather(name, t, like, i) * enc[n]
        return out

    # -- the paper's formulas ---------------------------------------------------------------------
    def aggregate(self, enc: Encodings, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """a_t = sum_i w_t^(i) E_i(x_i): what step t adds to z_{t-1} before scaling."""
        return self._weighted("w", enc, self._t(t, like), like)

    def injected(self, enc: Encodings, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """sum_i lambda_t^(i) E_i(x_i): the aggregated modalities' part of the marginal mean of z_t."""
        return self._weighted("lam", enc, self._t(t, like), like)

    def known_part(self, enc: Encodings, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """sum_j lambda_t^(j) E_j(x_j) over the modalities of ``enc`` only (any subset: those a sampler knows, the
        others count as zero): what the backbone of a task set with ``known_input`` reads (math.md, section 4)."""
        zeros = {n: torch.zeros_like(like) for n in self.names if n not in enc}
        return self.injected({**zeros, **enc}, t, like)

    def kernel(self, z_prev: torch.Tensor, enc: Encodings, t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(z_t | z_{t-1}, X) = N(sqrt(alpha_t) (z_{t-1} + a_t), (1 - alpha_t) I); t >= 1."""
        t = self._t(t, z_prev)
        mean = self._gather("sqrt_alpha", t, z_prev) * (z_prev + self.aggregate(enc, t, z_prev))
        return mean, self._gather("one_m_alpha", t, z_prev).expand_as(z_prev)

    def marginal(self, z0: torch.Tensor, enc: Encodings, t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(z_t | z_0, X) = N(sqrt(abar_t) z_0 + sum_i lambda_t^(i) E_i, (1 - abar_t) I)."""
        t = self._t(t, z0)
        mean = self._gather("sqrt_abar", t, z0) * z0 + self.injected(enc, t, z0)
        return mean, self._gather("one_m_abar", t, z0).expand_as(z0)

    def q_sample(self, z0: torch.Tensor, enc: Encodings, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """z_t = sqrt(abar_t) z_0 + sum_i lambda_t^(i) E_i(x_i) + sqrt(1 - abar_t) eps (reparameterised marginal)."""
        mean, var = self.marginal(z0, enc, t)
        return mean + var.sqrt() * eps

    def eps_from_z0(self, z_t: torch.Tensor, z0: torch.Tensor, enc: Encodings, t: torch.Tensor | int) -> torch.Tensor:
        """The total noise in z_t: eps = (z_t - sqrt(abar_t) z_0 - sum_i lambda_t^(i) E_i) / sqrt(1 - abar_t); t >= 1."""
        mean, var = self.marginal(z0, enc, t)
        return (z_t - mean) / var.sqrt()

    def z0_from_eps(self, z_t: torch.Tensor, eps: torch.Tensor, enc: Encodings, t: torch.Tensor | int) -> torch.Tensor:
        """z_0 = (z_t - sum_i lambda_t^(i) E_i - sqrt(1 - abar_t) eps) / sqrt(abar_t): the marginal solved for z_0."""
        t = self._t(t, z_t)
        ab = self._gather("abar", t, z_t)
        return (z_t - self.injected(enc, t, z_t) - (1 - ab).sqrt() * eps) / ab.sqrt()

    def posterior(self, z_t: torch.Tensor, z0: torch.Tensor, enc: Encodings, t: torch.Tensor | int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(z_{t-1} | z_t, z_0, X) in terms of z_0 and the lambdas; t >= 1.

            mu~_t = c_0 z_0 + c_t z_t + sum_i (beta_t lambda_t^(i) / (sqrt(alpha_t) (1 - abar_t)) - w_t^(i)) E_i
            c_0 = sqrt(abar_{t-1}) beta_t / (1 - abar_t),  c_t = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t)
            beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)
        """
        t = self._t(t, z_t)
        mean = self._gather("c0", t, z_t) * z0 + self._gather("ct", t, z_t) * z_t + self._weighted("ce", enc, t, z_t)
        return mean, self._gather("beta_tilde", t, z_t).expand_as(z_t)

    def posterior_mean_eps(self, z_t: torch.Tensor, eps: torch.Tensor, enc: Encodings, t: torch.Tensor | int
                           ) -> torch.Tensor:
        """mu~_t = (1 / sqrt(alpha_t)) (z_t - beta_t / sqrt(1 - abar_t) eps) - a_t (the eps form); t >= 1.

        With ``eps`` the true total noise and ``enc`` the true encodings this equals :meth:`posterior`'s mean;
        with eps_theta and predicted encodings E_i(xhat_i) it is the reverse mean mu_theta (:meth:`reverse_mean`).
        """
        t = self._t(t, z_t)
        coef, sqrt_alpha = self._gather("eps_coef", t, z_t), self._gather("sqrt_alpha", t, z_t)
        return (z_t - coef * eps) / sqrt_alpha - self.aggregate(enc, t, z_t)

    def reverse_mean(self, z_t: torch.Tensor, eps_theta: torch.Tensor, enc_hat: Encodings, t: torch.Tensor | int
                     ) -> torch.Tensor:
        """mu_theta(z_t, t) = (1 / sqrt(alpha_t)) (z_t - beta_t / sqrt(1 - abar_t) eps_theta) - sum_i w_t^(i) E_i(xhat_i)."""
        return self.posterior_mean_eps(z_t, eps_theta, enc_hat, t)

    def reverse_variance(self, t: torch.Tensor | int, like: torch.Tensor, kind: str = "beta") -> torch.Tensor:
        """sigma_t^2 of p_theta(z_{t-1} | z_t): beta_t ("beta") or beta~_t ("beta_tilde")."""
        if kind not in ("beta", "beta_tilde"):
            raise ScheduleError(f"reverse variance must be 'beta' or 'beta_tilde', got {kind!r}")
        return self._gather(kind, self._t(t, like), like).expand_as(like)
