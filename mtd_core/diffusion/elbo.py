"""The multi-modal variational bound, term by term, for any number of modalities (docs/math.md, section 5).

    -log p(x_base) <= L_T + sum_{t=2}^T L_{t-1} + L_0                           (the bound of the base)
    -log p(X)      <= the same + sum_i L_dec^(i)                                  (discrete decoders only)

    L_T      = KL(q(z_T | z_0, X) || N(0, I))                                    (prior; includes lambda_T)
    L_{t-1}  = KL(q(z_{t-1} | z_t, z_0, X) || p_theta(z_{t-1} | z_t))            (denoising, t >= 2)
    L_0      = -log p_theta(x_base | z_1)  (discretised Gaussian for 8-bit images, mean mu_theta(z_1, 1))
    L_dec^(i) = -log p_theta(x_i | z_1)    (each aggregated modality's decoding term, from its head at t = 1)

The first line holds for any task set: q(z_{1:T} | z_0, X) is a valid variational distribution for the reverse chain
p_theta(z_{0:T}), whatever the aggregated data X it was built from. The decoder terms add -log p(x_i | z_1) only when
that is a probability (a label, a caption); a continuous decoder (a Gaussian image head) adds a density, which can be
negative, and a surrogate (the representation's cosine loss) adds neither, so they are reported apart
(docs/math.md, section 5). With one modality, or every w = 0, every term equals DDPM's (Ho et al. 2020, eq. 5).

A model told the known part (TaskSet ``known_input``) generates a committed modality j first, from its head at z_T,
and the chain given it: p(z_T) p(x_j | z_T) prod_t p_theta(z_{t-1} | z_t, x_j). Its bound (``known``) feeds every
step the true part of those modalities and uses their true encodings in mu_theta; their decoder term becomes
L_dec^(j) = -log p_theta(x_j | z_T), z_T ~ q(z_T | z_0, X), and joins the bound of the base:
-log p(x_base) <= -log p(x_base, x_j) <= L_T + L_dec^(j) + sum_{t=2}^T L_{t-1} + L_0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs
import torch

from mtd_core.diffusion.forward import ForwardProcess
from mtd_core.errors import ScheduleError
from mtd_core.outputs import checked_loss
from mtd_core.types import BasePrediction, Denoiser, DenoiserOutput, LatentSpec, Role

if TYPE_CHECKING:
    from mtd_core.modality import Modality


def gaussian_kl(mean1: torch.Tensor, var1: torch.Tensor, mean2: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean1, var1) || N(mean2, var2)) in nats."""
    return 0.5 * (torch.log(var2) - torch.log(var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretised_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Elementwise -log of the mass N(mean, exp(log_var)) gives the bin of x (DDPM, eq. 13).

    ``x`` lies on the grid of ``bins`` values spanning [-1, 1]; the edge bins extend to -inf and +inf.
    """
    half = 1.0 / (bins - 1)  # half a bin width; the edge tests below sit half a bin inside [-1, 1] for any bins
    inv_std = torch.exp(-0.5 * log_var)
    centred = x - mean
    cdf_plus = _std_normal_cdf(inv_std * (centred + half))
    cdf_minus = _std_normal_cdf(inv_std * (centred - half))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_minus).clamp(min=1e-12))
    log_probs = torch.where(
        x < -1.0 + half, log_cdf_plus,
        torch.where(x > 1.0 - half, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_minus).clamp(min=1e-12))),
    )
    return -log_probs


@attrs.frozen
class ELBOTerms:
    """The bound's terms per example (each shape (B,), nats), the bound of the base and its bits per dimension.

    ``dims`` is the number of dimensions D of the base's data: bits/dim = (prior + denoise + recon) / (D ln 2).
    ``known`` names the modalities the chain was told (their decoder terms, read at z_T, are part of the bound).
    """

    prior: torch.Tensor
    denoise: torch.Tensor
    recon: torch.Tensor
    decode: dict[str, torch.Tensor]
    dims: int
    known: tuple[str, ...] = ()

    @property
    def bound(self) -> torch.Tensor:
        """prior + denoise + recon (+ the known modalities' decoder terms): the bound on -log p(x_base) in nats per
        example."""
        return self.prior + self.denoise + self.recon + sum((self.decode[n] for n in self.known),
                                                            torch.zeros_like(self.prior))

    @property
    def total(self) -> torch.Tensor:
        """The bound plus every other decoder term, in nats per example (a bound on -log p(X) only when every
        decoder term is a discrete probability; see the module docstring)."""
        return self.bound + sum((v for n, v in self.decode.items() if n not in self.known),
                                torch.zeros_like(self.prior))

    @property
    def bpd(self) -> torch.Tensor:
        """The bound of the base in bits per dimension of its data, per example."""
        return self.bound / (self.dims * math.log(2.0))


def _sum_dims(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)


def _noise_like(z: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """eps ~ N(0, I) shaped like z, drawn on the generator's device (a CPU generator works for a GPU batch)."""
    device = generator.device if generator is not None else z.device
    return torch.randn(z.shape, generator=generator, device=device, dtype=z.dtype).to(z.device)


def prior_kl(fp: ForwardProcess, z0: torch.Tensor, enc: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """L_T = KL(q(z_T | z_0, X) || N(0, I)) per example: the mean includes sum_i lambda_T^(i) E_i(x_i)."""
    mean, var = fp.marginal(z0, enc, fp.T)
    return _sum_dims(gaussian_kl(mean, var, torch.zeros_like(mean), torch.ones_like(var)))


def step_kl(fp: ForwardProcess, t: torch.Tensor, z_t: torch.Tensor, z0: torch.Tensor, enc: Mapping[str, torch.Tensor],
            eps_theta: torch.Tensor, enc_hat: Mapping[str, torch.Tensor], var_kind: str = "beta") -> torch.Tensor:
    """L_{t-1} = KL(q(z_{t-1} | z_t, z_0, X) || N(mu_theta, sigma_t^2 I)) per example, for t >= 2."""
    mean_q, var_q = fp.posterior(z_t, z0, enc, t)
    mean_p = fp.reverse_mean(z_t, eps_theta, enc_hat, t)
    var_p = fp.reverse_variance(t, z_t, var_kind)
    return _sum_dims(gaussian_kl(mean_q, var_q, mean_p, var_p))


def base_prediction(fp: ForwardProcess, z_1: torch.Tensor, eps_theta: torch.Tensor,
                    enc_hat: Mapping[str, torch.Tensor], channels: int | None = None) -> BasePrediction:
    """p_theta(z_0 | z_1) = N(mu_theta(z_1, 1), beta_1 I) on the base's first ``channels`` channels (all when
    None), the decoder of L_0."""
    mean = fp.reverse_mean(z_1, eps_theta, enc_hat, 1)[:, :channels]
    return BasePrediction(mean=mean, log_var=torch.log(fp.reverse_variance(1, mean, "beta")))


def stratified_timesteps(T: int, K: int, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, K) timesteps in 2..T for a Monte Carlo estimate of the sum of the T - 1 denoising terms, one
    systematic sample per example: t_k = 2 + floor((k + u) (T - 1) / K), k = 0..K-1, with its own u ~ U[0, 1).

    Every t is drawn with probability K / (T - 1), so (T - 1) / K times the sum of the K terms is unbiased (as for a
    uniform subset), but each example covers the whole range of t: the very uneven per-t terms (the small t dominate)
    no longer make the estimate depend on which t a batch happened to draw, and examples are independent, so their
    spread is the estimate's standard error.
    """
    if T < 2 or not 1 <= K <= T - 1:
        raise ScheduleError(f"ELBO: need 1 <= K <= T - 1 denoising terms, got K = {K} with T = {T}")
    u = torch.rand(batch, 1, generator=generator, dtype=torch.float64)
    k = torch.arange(K, dtype=torch.float64)
    return (2 + ((k + u) * ((T - 1) / K)).floor()).long().clamp_(2, T)


class MultiModalELBO:
    """Evaluates every term of the bound for a batch, with a given denoiser.

    Args:
        fp: the forward process (noise schedule and the aggregated modalities' weights).
        modalities: name -> Modality for every modality of the task set (base included).
        latent: the base's part of Z (TaskSet.base_latent): its first channels are the base's, and its size is the
            D of bits/dim.
        encode: maps a batch (name -> data) to (z_0, {aggregated name -> E_i(x_i)}).
        var_kind: sigma_t^2 of the reverse process, "beta" or "beta_tilde".
        known: aggregated modalities the reverse chain is told (the module docstring): the denoiser is called as
            ``denoiser(z_t, t, known=their part of z_t)`` and their decoder terms are read at z_T.
    """

    def __init__(self, fp: ForwardProcess, modalities: Mapping[str, Modality], latent: LatentSpec,
                 encode: Callable[[Mapping[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]],
                 var_kind: str = "beta", known: Sequence[str] = ()) -> None:
        self.fp, self.modalities, self.latent, self.encode, self.var_kind = fp, dict(modalities), latent, encode, var_kind
        unknown = [n for n in known if n not in fp.names]
        if unknown:
            raise ScheduleError(f"ELBO: known names {unknown}, which are not aggregated modalities {list(fp.names)}")
        self.known = tuple(known)
        bases = [n for n, m in self.modalities.items() if m.role is Role.BASE]
        self.base = bases[0] if bases else None

    @torch.no_grad()
    def __call__(self, denoiser: Denoiser, batch: Mapping[str, torch.Tensor], *,
                 timesteps: torch.Tensor | None = None, generator: torch.Generator | None = None) -> ELBOTerms:
        """The terms for ``batch``. ``timesteps`` (default: all of 2..T) picks the steps whose L_{t-1} is
        evaluated: K steps shared by the batch, shape (K,), or K per example, shape (B, K) (e.g.
        :func:`stratified_timesteps`); a subset gives a Monte Carlo estimate of their sum (scaled by (T-1)/K),
        unbiased when every t is drawn with probability K / (T - 1).

        Steps are indices of ``fp``; the denoiser is fed the original t (``fp.timesteps``), so a respaced process
        gives the bound of the respaced model. Noise is drawn in the order of ``timesteps``, then for t = 1 (then
        for t = T, with ``known``)."""
        fp = self.fp
        z0, enc = self.encode(batch)
        B = z0.shape[0]
        ts = torch.arange(2, fp.T + 1) if timesteps is None else torch.as_tensor(timesteps).long()
        if ts.ndim <= 1:
            ts = ts.flatten().expand(B, -1)
        elif ts.ndim != 2 or ts.shape[0] != B:
            raise ScheduleError(f"ELBO: timesteps must have shape (K,) or (B, K) = ({B}, K), got {tuple(ts.shape)}")
        if ts.numel() and (ts.min() < 2 or ts.max() > fp.T):
            raise ScheduleError(
                f"ELBO: timesteps of the denoising terms must lie in 2..{fp.T} (L_0 at t = 1 is always "
                f"included), got values in [{int(ts.min())}, {int(ts.max())}]"
            )
        net_t = fp.timesteps.to(z0.device)  # the original t of each step: what the network is fed (respacing)
        told = {n: enc[n] for n in self.known}

        def run(z_t: torch.Tensor, t: torch.Tensor) -> tuple[DenoiserOutput, dict[str, torch.Tensor]]:
            """The denoiser at (z_t, t) and the encodings of its reverse mean (the true ones of told modalities)."""
            out = denoiser(z_t, net_t[t], known=fp.known_part(told, t, z_t)) if told else denoiser(z_t, net_t[t])
            return out, {**denoiser.predicted_encodings(out.preds), **told}

        denoise = z0.new_zeros(B)
        ts = ts.to(z0.device)
        for k in range(ts.shape[1]):
            tt = ts[:, k]
            z_t = fp.q_sample(z0, enc, tt, _noise_like(z0, generator))
            out, enc_hat = run(z_t, tt)
            denoise = denoise + step_kl(fp, tt, z_t, z0, enc, out.eps, enc_hat, self.var_kind)
        if ts.shape[1]:
            denoise = denoise * ((fp.T - 1) / ts.shape[1])
        one = torch.ones(B, dtype=torch.long, device=z0.device)
        z_1 = fp.q_sample(z0, enc, one, _noise_like(z0, generator))
        out, enc_hat = run(z_1, one)
        recon = z0.new_zeros(B)
        if self.base is not None:
            pred = base_prediction(fp, z_1, out.eps, enc_hat, self.latent.shape[0])
            recon = checked_loss(self.modalities[self.base], pred, batch[self.base])
        decode = {n: checked_loss(self.modalities[n], out.preds[n], batch[n]) for n in fp.names if n not in told}
        if told:  # -log p(x_j | z_T): the head that joint generation draws the told modalities from
            T = torch.full((B,), fp.T, dtype=torch.long, device=z0.device)
            preds = denoiser(fp.q_sample(z0, enc, T, _noise_like(z0, generator)), net_t[T]).preds
            decode.update({n: checked_loss(self.modalities[n], preds[n], batch[n]) for n in told})
        return ELBOTerms(prior=prior_kl(fp, z0, enc), denoise=denoise, recon=recon, decode=decode,
                         dims=self.latent.numel, known=self.known)
