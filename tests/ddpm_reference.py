"""A minimal, independent DDPM written from the papers' equations: the oracle of the reduction tests.

With one modality (only the base) or every aggregation weight w_t = 0, MT-Diffusion must be exactly DDPM
(Ho et al. 2020). The tests compare mtd_core against this file, so it deliberately shares no code with it:
it does not import mtd_core, computes the schedule's scalars as Python floats with explicit loops (``math``),
and evaluates every formula directly in the form the paper writes it. Equation numbers refer to
Ho et al., "Denoising Diffusion Probabilistic Models" (2020), unless they name Nichol & Dhariwal (2021).

Timesteps follow the paper: t = 1..T, and every per-step list is indexed by t (index 0 is t = 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""eps_theta(x_t, t): the noise prediction for a batch x_t at integer timesteps t of shape (B,)."""


def linear_betas(T: int, beta_start: float, beta_end: float) -> list[float]:
    """DDPM's linear schedule beta_1..beta_T (section 4), stretched by 1000/T as in Nichol & Dhariwal (2021)."""
    scale = 1000.0 / T
    lo, hi = scale * beta_start, scale * beta_end
    if T == 1:
        return [lo]
    return [lo + (hi - lo) * k / (T - 1) for k in range(T)]


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> list[float]:
    """Nichol & Dhariwal (2021), eq. 17: abar_t = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) pi/2),
    beta_t = min(1 - abar_t / abar_{t-1}, max_beta)."""

    def f(t: int) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    return [min(1.0 - f(t) / f(t - 1), max_beta) for t in range(1, T + 1)]


@dataclass(frozen=True)
class ReferenceELBO:
    """The bound's terms per example (B,), in nats (eq. 5): L_T, sum_{t>=2} L_{t-1} and L_0."""

    prior: torch.Tensor
    denoise: torch.Tensor
    recon: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        """L_T + sum_t L_{t-1} + L_0."""
        return self.prior + self.denoise + self.recon


def normal_kl(m1: torch.Tensor, v1: torch.Tensor, m2: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """KL(N(m1, v1) || N(m2, v2)) per element: log(s2 / s1) + (v1 + (m1 - m2)^2) / (2 v2) - 1/2."""
    return 0.5 * torch.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / (2.0 * v2) - 0.5


def discretised_nll(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor | float, bins: int = 256) -> torch.Tensor:
    """-log of the mass that N(mean, var) puts on the bin of x, per element (eq. 13).

    x lies on the grid -1 + 2k / (bins - 1), k = 0..bins-1. The bin of x is [x - delta, x + delta] with
    delta = 1 / (bins - 1), except that the first bin starts at -inf and the last ends at +inf.
    """
    k = torch.round((x + 1.0) * (bins - 1) / 2.0)
    delta = 1.0 / (bins - 1)
    lo = torch.where(k <= 0, torch.full_like(x, -math.inf), x - delta)
    hi = torch.where(k >= bins - 1, torch.full_like(x, math.inf), x + delta)
    std = torch.as_tensor(var, dtype=x.dtype).sqrt()
    mass = torch.special.ndtr((hi - mean) / std) - torch.special.ndtr((lo - mean) / std)
    return -torch.log(mass)


class DDPM:
    """The DDPM forward process and variational bound for a given beta_1..beta_T.

    Args:
        betas: beta_1..beta_T, each in (0, 1).
    """

    def __init__(self, betas: Sequence[float]) -> None:
        self.T = len(betas)
        self.betas = [0.0, *(float(b) for b in betas)]
        self.alphas = [1.0 - b for b in self.betas]
        self.alphas_cumprod: list[float] = []
        prod = 1.0
        for a in self.alphas:
            prod *= a
            self.alphas_cumprod.append(prod)
        # beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t (eq. 7); 0 at t = 0
        self.posterior_variance = [0.0] + [
            (1.0 - self.alphas_cumprod[t - 1]) / (1.0 - self.alphas_cumprod[t]) * self.betas[t]
            for t in range(1, self.T + 1)
        ]

    @staticmethod
    def _per_example(values: Sequence[float], t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """values[t_b] for each example b, shaped to broadcast against ``like`` (B, ...)."""
        ts = [int(t)] * like.shape[0] if isinstance(t, int) else [int(v) for v in t.reshape(-1)]
        col = torch.tensor([values[s] for s in ts], dtype=like.dtype, device=like.device)
        return col.reshape(-1, *([1] * (like.ndim - 1)))

    def sigma2(self, t: torch.Tensor | int, like: torch.Tensor, kind: str = "beta") -> torch.Tensor:
        """sigma_t^2 of p_theta(x_{t-1} | x_t): beta_t or beta~_t (section 3.2)."""
        return self._per_example(self.betas if kind == "beta" else self.posterior_variance, t, like)

    def q_mean_var(self, x0: torch.Tensor, t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (eq. 4)."""
        abar = self._per_example(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0, (1.0 - abar).expand_as(x0)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (section 3.2, Algorithm 1)."""
        mean, var = self.q_mean_var(x0, t)
        return mean + var.sqrt() * noise

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor | int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I) (eqs. 6-7)."""
        ab_prev = self._per_example([1.0, *self.alphas_cumprod[:-1]], t, x0)
        ab = self._per_example(self.alphas_cumprod, t, x0)
        beta = self._per_example(self.betas, t, x0)
        alpha = self._per_example(self.alphas, t, x0)
        mean = ab_prev.sqrt() * beta / (1.0 - ab) * x0 + alpha.sqrt() * (1.0 - ab_prev) / (1.0 - ab) * xt
        return mean, self._per_example(self.posterior_variance, t, x0).expand_as(x0)

    def p_mean(self, xt: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """mu_theta(x_t, t) = (1 / sqrt(alpha_t)) (x_t - beta_t / sqrt(1 - abar_t) eps_theta) (eq. 11)."""
        alpha = self._per_example(self.alphas, t, xt)
        beta = self._per_example(self.betas, t, xt)
        ab = self._per_example(self.alphas_cumprod, t, xt)
        return (xt - beta / (1.0 - ab).sqrt() * eps) / alpha.sqrt()

    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) per example."""
        mean, var = self.q_mean_var(x0, self.T)
        return normal_kl(mean, var, torch.zeros_like(mean), torch.ones_like(var)).flatten(1).sum(1)

    def step_kl(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor,
                kind: str = "beta") -> torch.Tensor:
        """L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || N(mu_theta(x_t, t), sigma_t^2 I)) per example, t >= 2."""
        mean_q, var_q = self.q_posterior(x0, xt, t)
        var_p = self.sigma2(t, xt, kind).expand_as(xt)
        return normal_kl(mean_q, var_q, self.p_mean(xt, t, eps), var_p).flatten(1).sum(1)

    def decoder_nll(self, x0: torch.Tensor, x1: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """L_0 = -log p_theta(x_0 | x_1) per example: the discretised decoder of eq. 13 with sigma_1^2 = beta_1."""
        ones = torch.ones(x0.shape[0], dtype=torch.long)
        return discretised_nll(x0, self.p_mean(x1, ones, eps), self.betas[1]).flatten(1).sum(1)

    def elbo(self, model: EpsModel, x0: torch.Tensor, generator: torch.Generator, kind: str = "beta"
             ) -> ReferenceELBO:
        """Every term of eq. 5 with one noise draw per term: for t = 2..T in increasing order, then t = 1."""
        B = x0.shape[0]
        denoise = torch.zeros(B, dtype=x0.dtype)
        for t in range(2, self.T + 1):
            tt = torch.full((B,), t, dtype=torch.long)
            xt = self.q_sample(x0, tt, torch.randn(x0.shape, generator=generator, dtype=x0.dtype))
            denoise = denoise + self.step_kl(x0, xt, tt, model(xt, tt), kind)
        ones = torch.ones(B, dtype=torch.long)
        x1 = self.q_sample(x0, ones, torch.randn(x0.shape, generator=generator, dtype=x0.dtype))
        return ReferenceELBO(prior=self.prior_kl(x0), denoise=denoise, recon=self.decoder_nll(x0, x1, model(x1, ones)))

    def loss_simple(self, model: EpsModel, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """||eps - eps_theta(x_t, t)||^2 per example, averaged over dimensions (eq. 14)."""
        xt = self.q_sample(x0, t, noise)
        return ((noise - model(xt, t)) ** 2).flatten(1).mean(1)

    def loss_vlb(self, model: EpsModel, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """T * L_{t-1} (or T * L_0 at t = 1) per example, per dimension: an unbiased estimate of
        sum_{t=1}^T L_{t-1} / D with t ~ U{1..T}."""
        xt = self.q_sample(x0, t, noise)
        eps = model(xt, t)
        D = x0[0].numel()
        out = torch.empty(x0.shape[0], dtype=x0.dtype)
        for b in range(x0.shape[0]):
            s = int(t[b])
            if s == 1:
                term = self.decoder_nll(x0[b:b + 1], xt[b:b + 1], eps[b:b + 1])
            else:
                term = self.step_kl(x0[b:b + 1], xt[b:b + 1], s, eps[b:b + 1])
            out[b] = self.T * term[0] / D
        return out
