"""Property tests of the multi-modal variational bound, term by term (docs/math.md, sections 5 and 7).

Defines two tiny test modalities (an 8-bit base image and a Gaussian aggregated modality shaped like the latent)
and a toy multi-task denoiser; tests/test_math_loss.py reuses them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs
import pytest
import torch
from ddpm_reference import DDPM, discretised_nll, normal_kl
from hypothesis import given
from hypothesis import strategies as st
from test_math_forward import Case, Inputs, close, inputs_for, processes, random_t

from mtd_core.diffusion.elbo import (
    ELBOTerms,
    MultiModalELBO,
    base_prediction,
    discretised_gaussian_nll,
    gaussian_kl,
    prior_kl,
    step_kl,
    stratified_timesteps,
)
from mtd_core.diffusion.forward import ForwardProcess
from mtd_core.diffusion.noise import NoiseSchedule
from mtd_core.diffusion.weights import WindowedLambda
from mtd_core.errors import ScheduleError
from mtd_core.modality import BasePrediction, DataSpec, HeadInput, LatentSpec, Modality, Role
from mtd_core.types import DenoiserOutput

# -- test modalities and a toy denoiser (shared with test_math_loss.py) -------------------------------------------


@attrs.frozen
class ShapeOptions:
    """Options of the test modalities.

    Args:
        shape: the per-example data shape (C, H, W); equal to the latent shape here.
    """

    shape: tuple[int, ...] = attrs.field(default=(1, 2, 2), converter=tuple)


class GridImage(Modality):
    """A base modality: 8-bit values on the grid of [-1, 1], encoded by the identity; L_0 is DDPM's
    discretised Gaussian (eq. 13) summed over dimensions."""

    kind = "test_grid_image"
    roles = (Role.BASE,)
    head_input = HeadInput.NONE
    Config = ShapeOptions

    def data_spec(self) -> DataSpec:
        return DataSpec(self.config.shape, "float64", -1.0, 1.0)

    def latent_shape(self) -> tuple[int, int, int]:
        return self.config.shape  # type: ignore[return-value]

    def loss(self, pred: BasePrediction, x: torch.Tensor) -> torch.Tensor:
        return discretised_gaussian_nll(x, pred.mean, pred.log_var).flatten(1).sum(1)

    def sample(self, pred: Any, *, greedy: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        return pred.mean.clamp(-1, 1)


class GaussianVector(Modality):
    """An aggregated modality whose head predicts its mean: -log N(x; pred, I).

    An example is a pair (2, *shape) of latent-shaped arrays, twice the latent's size (so D_i != D); its
    encoding is the first of the pair (see :meth:`Setup.encode`).
    """

    kind = "test_gaussian"
    Config = ShapeOptions

    def data_spec(self) -> DataSpec:
        return DataSpec((2, *self.config.shape), "float64")

    def loss(self, pred: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((pred - x) ** 2 + math.log(2 * math.pi)).flatten(1).sum(1)

    def sample(self, pred: Any, *, greedy: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        return pred


def on_grid(z: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """z rounded to the grid -1 + 2k / (bins - 1), with each example's first value -1 and last value 1
    (so the edge bins are always exercised)."""
    half = (bins - 1) / 2
    x = torch.round((z.clamp(-1, 1) + 1) * half) / half - 1
    flat = x.reshape(x.shape[0], -1)
    flat[:, 0], flat[:, -1] = -1.0, 1.0
    return x


class ToyDenoiser:
    """A fixed, deterministic multi-task denoiser that knows z_0 and X.

    eps_theta(z_t, t) is the true total noise of z_t plus ``err`` tanh(z_t + t / T), so every bound term is
    finite and nonzero (``err`` = 0 gives the oracle). Each aggregated modality's head predicts the pair
    (p, p / 2) with p = 0.5 tanh(z_t) + t / T + c(name), independent of the order of the modalities, and
    E_i(xhat_i) = p. Every call is recorded.

    Args:
        fp: the forward process (its ``timesteps`` map the network's t back to a step of ``fp``).
        z0: the true z_0 of the batch.
        enc: the true encodings E_i(x_i).
        err: the size of the error added to the true noise.
        oracle_encodings: E_i(xhat_i) = E_i(x_i) when set, else the head's prediction.
    """

    def __init__(self, fp: ForwardProcess, z0: torch.Tensor, enc: Mapping[str, torch.Tensor], err: float = 0.3,
                 oracle_encodings: bool = False) -> None:
        self.fp, self.z0, self.enc, self.err, self.oracle_encodings = fp, z0, dict(enc), err, oracle_encodings
        self.T_net = int(fp.timesteps[-1])
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, z_t: torch.Tensor, t: torch.Tensor) -> DenoiserOutput:
        self.calls.append((z_t.clone(), t.clone()))
        step = torch.searchsorted(self.fp.timesteps, t)  # the original t -> the index of fp's step
        tt = (t.to(z_t.dtype) / self.T_net).reshape(-1, *([1] * (z_t.ndim - 1)))
        eps = self.fp.eps_from_z0(z_t, self.z0, self.enc, step) + self.err * torch.tanh(z_t + tt)
        p = {n: 0.5 * torch.tanh(z_t) + tt + sum(map(ord, n)) % 7 / 7 for n in self.fp.names}
        return DenoiserOutput(eps=eps, preds={n: torch.stack([v, v / 2], 1) for n, v in p.items()})

    def predicted_encodings(self, preds: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return dict(self.enc) if self.oracle_encodings else {n: p[:, 0] for n, p in preds.items()}


@attrs.frozen
class Setup:
    """A task set for one drawn case: the modalities, a batch on which encoding is the identity, the bound."""

    modalities: dict[str, Modality]
    batch: dict[str, torch.Tensor]
    latent: LatentSpec

    def encode(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """z_0 = the image; E_i(x_i) = the first of the pair x_i (the batch holds unit-RMS encodings there)."""
        return batch["image"], {n: batch[n][:, 0] for n, m in self.modalities.items() if m.role is Role.AGGREGATED}

    def elbo(self, fp: ForwardProcess, var_kind: str = "beta") -> MultiModalELBO:
        """The bound of ``fp`` over these modalities."""
        return MultiModalELBO(fp, self.modalities, self.latent, self.encode, var_kind)


def setup_for(case: Case, x: Inputs, names: list[str] | None = None, loss_weights: Mapping[str, float] | None = None
              ) -> Setup:
    """The GridImage base plus one GaussianVector per aggregated modality of ``case`` (in ``names`` order), with
    ``loss_weights`` by name (the base's "image" included; 1 where not given)."""
    shape = case.shape[1:]
    mods: dict[str, Modality] = {"image": GridImage(name="image", shape=shape,
                                                    loss_weight=(loss_weights or {}).get("image", 1.0))}
    for n in names or list(case.weights):
        mods[n] = GaussianVector(name=n, weights=case.weights[n], shape=shape,
                                 loss_weight=(loss_weights or {}).get(n, 1.0))
    batch = {"image": on_grid(x.z0), **{n: torch.stack([x.enc[n], -x.enc[n]], 1) for n in names or list(case.weights)}}
    return Setup(mods, batch, LatentSpec(shape))


def fixed_generator(case: Case) -> torch.Generator:
    """A generator seeded from the case (the same draws for the bound and its reference)."""
    return torch.Generator().manual_seed(case.seed + 2)


# -- the elementary terms ---------------------------------------------------------------------------------------------


@given(st.integers(0, 2**31 - 1))
def test_gaussian_kl_is_the_closed_form_and_nonnegative(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    m1, m2 = torch.randn(2, 50, generator=g, dtype=torch.float64)
    v1, v2 = torch.rand(2, 50, generator=g, dtype=torch.float64) * 3 + 1e-3
    kl = gaussian_kl(m1, v1, m2, v2)
    close(kl, normal_kl(m1, v1, m2, v2), rtol=1e-12, atol=1e-12)
    assert (kl >= 0).all()
    assert gaussian_kl(m1, v1, m1, v1).abs().max() <= 1e-15


@given(st.sampled_from([2, 16, 256, 4096]), st.integers(0, 2**31 - 1))
def test_discretised_gaussian_matches_ddpm_and_sums_to_one(bins: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = on_grid(torch.rand(3, 64, generator=g, dtype=torch.float64) * 2 - 1, bins)
    std = torch.rand(3, 1, generator=g, dtype=torch.float64) * 0.5 + 2.0 / (bins - 1)
    mean = x + std * torch.randn(3, 64, generator=g, dtype=torch.float64)
    nll = discretised_gaussian_nll(x, mean, (std**2).log().expand_as(x), bins)
    close(nll, discretised_nll(x, mean, std**2, bins), rtol=1e-7, atol=1e-9)
    # the bins partition the real line: the masses of all grid values sum to 1 for any mean and variance
    grid = torch.linspace(-1, 1, bins, dtype=torch.float64).expand(3, bins)
    mass = torch.exp(-discretised_gaussian_nll(grid, mean[:, :1].expand(3, bins), (std**2).log().expand(3, bins), bins))
    floor = bins * 1e-12  # each bin's mass is floored at 1e-12 (a finite log for far-away bins)
    close(mass.sum(1), torch.ones(3, dtype=torch.float64), rtol=0, atol=floor + 1e-10)


@given(processes())
def test_prior_kl_includes_the_lambda_T_part(case: Case) -> None:
    fp, x = case.fp, inputs_for(case)
    mean = fp.abar[-1].sqrt() * x.z0 + sum((fp.lam[i, -1] * x.enc[n] for i, n in enumerate(fp.names)),
                                           torch.zeros_like(x.z0))
    v = 1 - fp.abar[-1]
    expected = 0.5 * (mean**2 + v - 1 - torch.log(v)).flatten(1).sum(1)  # KL(N(mean, v) || N(0, 1)), summed
    kl = prior_kl(fp, x.z0, x.enc)
    close(kl, expected, rtol=1e-10, atol=1e-12)
    assert (kl >= 0).all()


@given(processes(), st.sampled_from(["beta", "beta_tilde"]))
def test_step_kl_is_nonnegative_and_zero_at_the_true_posterior(case: Case, var_kind: str) -> None:
    fp, x = case.fp, inputs_for(case)
    t = random_t(case, low=2)  # every drawn schedule has T >= 2
    z_t = fp.q_sample(x.z0, x.enc, t, x.eps)
    wrong_enc = {n: e.flip(0) for n, e in x.enc.items()}
    assert (step_kl(fp, t, z_t, x.z0, x.enc, x.z_any, wrong_enc, var_kind) >= 0).all()
    # the oracle (true noise, true encodings) matches the posterior mean exactly
    kl = step_kl(fp, t, z_t, x.z0, x.enc, x.eps, x.enc, var_kind)
    D = x.z0[0].numel()
    if var_kind == "beta_tilde":
        assert kl.abs().max() <= 1e-9
    else:  # only the variances differ: D/2 (r - 1 - log r), r = beta~_t / beta_t
        r = fp.beta_tilde[t] / fp.beta[t]
        close(kl, 0.5 * D * (r - 1 - torch.log(r)), rtol=1e-8, atol=1e-12)


@given(processes(zero=True), st.sampled_from(["beta", "beta_tilde"]))
def test_elementary_terms_reduce_to_ddpm(case: Case, var_kind: str) -> None:
    fp, x = case.fp, inputs_for(case)
    ref = DDPM(fp.noise.betas.tolist())
    close(prior_kl(fp, x.z0, x.enc), ref.prior_kl(x.z0), rtol=1e-10, atol=1e-12)
    t = random_t(case, low=2)
    z_t = fp.q_sample(x.z0, x.enc, t, x.eps)
    close(step_kl(fp, t, z_t, x.z0, x.enc, x.z_any, x.enc, var_kind), ref.step_kl(x.z0, z_t, t, x.z_any, var_kind),
          rtol=1e-8, atol=1e-10)
    pred = base_prediction(fp, z_t, x.z_any, x.enc)
    ones = torch.ones(case.shape[0], dtype=torch.long)
    close(pred.mean, ref.p_mean(z_t, ones, x.z_any), rtol=1e-10, atol=1e-10)
    close(pred.log_var, torch.full_like(x.z0, math.log(ref.betas[1])), rtol=1e-12, atol=0)


@given(processes(max_T=30))
def test_float32_terms_stay_close_to_float64(case: Case) -> None:
    fp, x64 = case.fp, inputs_for(case)
    x32 = x64.to(torch.float32)
    t = random_t(case, low=2)
    for x in (x64, x32):
        assert prior_kl(fp, x.z0, x.enc).dtype == x.z0.dtype
    close(prior_kl(fp, x32.z0, x32.enc).double(), prior_kl(fp, x64.z0, x64.enc), rtol=1e-4, atol=1e-4)
    kls = []
    for x in (x64, x32):
        z_t = fp.q_sample(x.z0, x.enc, t, x.eps)
        kls.append(step_kl(fp, t, z_t, x.z0, x.enc, x.z_any, {n: e.flip(0) for n, e in x.enc.items()}).double())
    close(kls[1], kls[0], rtol=1e-3, atol=1e-3)


# -- the whole bound ---------------------------------------------------------------------------------------------------


@given(processes(zero=True, max_n=3, max_T=25), st.sampled_from(["beta", "beta_tilde"]))
def test_the_bound_reduces_to_ddpm_with_the_same_denoiser(case: Case, var_kind: str) -> None:
    """N = 1 (only the base) or every w = 0: prior, denoising and reconstruction terms are DDPM's; the
    aggregated modalities only add their decoding terms -log p(x_i | z_1)."""
    fp, x = case.fp, inputs_for(case)
    s = setup_for(case, x)
    den = ToyDenoiser(fp, s.batch["image"], x.enc)
    terms = s.elbo(fp, var_kind)(den, s.batch, generator=fixed_generator(case))
    ref = DDPM(fp.noise.betas.tolist()).elbo(lambda z, t: den(z, t).eps, s.batch["image"], fixed_generator(case),
                                             var_kind)
    close(terms.prior, ref.prior, rtol=1e-10, atol=1e-10)
    close(terms.denoise, ref.denoise, rtol=1e-8, atol=1e-8)
    close(terms.recon, ref.recon, rtol=1e-8, atol=1e-8)
    z_1, t_1 = den.calls[fp.T - 1]  # the mtd bound's last call reads the heads at t = 1
    assert t_1.eq(1).all() and set(terms.decode) == set(fp.names)
    preds = den(z_1, t_1).preds
    for n in fp.names:
        close(terms.decode[n], s.modalities[n].loss(preds[n], s.batch[n]), rtol=1e-12, atol=1e-12)
    close(terms.total, ref.total + sum(terms.decode.values(), torch.zeros_like(ref.total)), rtol=1e-8, atol=1e-8)
    close(terms.bound, terms.prior + terms.denoise + terms.recon, rtol=0, atol=0)  # the decoders stay apart
    close(terms.bpd, ref.total / (s.latent.numel * math.log(2)), rtol=1e-8, atol=1e-8)


@given(processes(min_n=1, max_n=3, max_T=25))
def test_the_oracle_denoiser_makes_every_denoising_term_vanish(case: Case) -> None:
    fp, x = case.fp, inputs_for(case)
    s = setup_for(case, x)
    oracle = ToyDenoiser(fp, s.batch["image"], x.enc, err=0.0, oracle_encodings=True)
    terms = s.elbo(fp, "beta_tilde")(oracle, s.batch, generator=fixed_generator(case))
    assert terms.denoise.abs().max() <= 1e-8
    assert torch.isfinite(terms.recon).all() and torch.isfinite(terms.total).all()
    terms = s.elbo(fp, "beta")(oracle, s.batch, generator=fixed_generator(case))
    r = fp.beta_tilde[2:] / fp.beta[2:]  # with sigma_t^2 = beta_t only the variances differ
    expected = 0.5 * s.latent.numel * float((r - 1 - torch.log(r)).sum())
    close(terms.denoise, torch.full_like(terms.denoise, expected), rtol=1e-8, atol=1e-10)


@given(processes(min_n=2, max_n=4, max_T=20), st.data())
def test_the_order_of_the_modalities_does_not_change_the_bound(case: Case, data: st.DataObject) -> None:
    names = data.draw(st.permutations(list(case.weights)))
    if names == list(case.weights):
        names = names[1:] + names[:1]
    permuted = ForwardProcess(case.fp.noise, {n: case.weights[n] for n in names})
    x = inputs_for(case)
    results = []
    for fp, order in ((case.fp, list(case.weights)), (permuted, names)):
        s = setup_for(case, x, order)
        results.append(s.elbo(fp)(ToyDenoiser(fp, s.batch["image"], x.enc), s.batch, generator=fixed_generator(case)))
    a, b = results
    for field in ("prior", "denoise", "recon", "total"):
        close(getattr(b, field), getattr(a, field), rtol=1e-10, atol=1e-10)
    assert list(b.decode) == names
    for n in names:
        close(b.decode[n], a.decode[n], rtol=1e-12, atol=1e-12)


@given(processes(min_n=1, max_n=2, max_T=20), st.data())
def test_a_subset_of_timesteps_is_an_unbiased_rescaled_estimate(case: Case, data: st.DataObject) -> None:
    fp, x = case.fp, inputs_for(case)
    t = data.draw(st.integers(2, fp.T))
    s = setup_for(case, x)
    den = ToyDenoiser(fp, s.batch["image"], x.enc)
    terms = s.elbo(fp)(den, s.batch, timesteps=torch.tensor([t]), generator=fixed_generator(case))
    eps = torch.randn(x.z0.shape, generator=fixed_generator(case), dtype=x.z0.dtype)  # the first draw is for t
    z0 = s.batch["image"]
    z_t = fp.q_sample(z0, x.enc, t, eps)
    out = den(z_t, torch.full((case.shape[0],), t))
    expected = (fp.T - 1) * step_kl(fp, torch.full((case.shape[0],), t), z_t, z0, x.enc, out.eps,
                                    den.predicted_encodings(out.preds))
    close(terms.denoise, expected, rtol=1e-10, atol=1e-10)
    for bad in ([1], [fp.T + 1]):
        with pytest.raises(ScheduleError, match=rf"timesteps of the denoising terms must lie in 2..{fp.T}"):
            s.elbo(fp)(den, s.batch, timesteps=torch.tensor(bad))


@given(processes(min_n=1, max_n=2, max_T=20), st.data())
def test_per_example_timesteps_equal_to_shared_ones_give_the_same_bound(case: Case, data: st.DataObject) -> None:
    fp, x = case.fp, inputs_for(case)
    ts = torch.tensor(data.draw(st.lists(st.integers(2, fp.T), min_size=1, max_size=4)))
    s = setup_for(case, x)
    den = ToyDenoiser(fp, s.batch["image"], x.enc)
    shared = s.elbo(fp)(den, s.batch, timesteps=ts, generator=fixed_generator(case))
    rows = s.elbo(fp)(den, s.batch, timesteps=ts.expand(case.shape[0], -1), generator=fixed_generator(case))
    close(rows.denoise, shared.denoise, rtol=0, atol=0)
    with pytest.raises(ScheduleError, match=r"shape \(K,\) or \(B, K\)"):
        s.elbo(fp)(den, s.batch, timesteps=ts.expand(case.shape[0] + 1, -1))


@given(st.integers(2, 60), st.data())
def test_stratified_timesteps_cover_every_stratum_once(T: int, data: st.DataObject) -> None:
    K = data.draw(st.integers(1, T - 1))
    ts = stratified_timesteps(T, K, 64, torch.Generator().manual_seed(T))
    assert ts.shape == (64, K) and ts.dtype == torch.long
    assert int(ts.min()) >= 2 and int(ts.max()) <= T
    lo = torch.tensor([2 + math.floor(k * (T - 1) / K) for k in range(K)])
    hi = torch.tensor([2 + math.floor((k + 1) * (T - 1) / K) for k in range(K)])  # exclusive (up to rounding)
    assert bool(((ts >= lo) & (ts <= hi)).all()) and bool((ts[:, 1:] > ts[:, :-1]).all())
    if K == T - 1:
        assert torch.equal(ts, torch.arange(2, T + 1).expand(64, -1))  # all terms: exact


@pytest.mark.parametrize("T, K", [(20, 7), (1000, 50), (11, 3)])
def test_stratified_timesteps_draw_every_t_with_probability_k_over_t_minus_1(T: int, K: int) -> None:
    """What makes (T - 1)/K times the sum of the drawn terms unbiased for the sum over 2..T."""
    n = 200_000
    ts = stratified_timesteps(T, K, n, torch.Generator().manual_seed(0))
    freq = torch.bincount(ts.flatten(), minlength=T + 1)[2:].double() / n
    assert torch.allclose(freq, torch.full_like(freq, K / (T - 1)), atol=0.01)
    with pytest.raises(ScheduleError, match="1 <= K <= T - 1"):
        stratified_timesteps(T, T, 1)


def test_a_respaced_bound_feeds_the_network_the_original_timesteps() -> None:
    noise = NoiseSchedule.linear(100)
    fp = ForwardProcess(noise, {"label": WindowedLambda(peak=0.5)})
    kept = [10, 40, 70, 100]
    rp = fp.respace(kept)
    case = Case(rp, {"label": WindowedLambda(peak=0.5)}, (2, 1, 2, 2), 0)
    x = inputs_for(case)
    s = setup_for(case, x)
    den = ToyDenoiser(rp, s.batch["image"], x.enc)
    terms = s.elbo(rp)(den, s.batch, generator=torch.Generator().manual_seed(0))
    assert [int(t[0]) for _, t in den.calls] == [40, 70, 100, 10]  # steps 2..K, then step 1
    assert isinstance(terms, ELBOTerms) and torch.isfinite(terms.total).all()
    # the prior depends on abar_T and lambda_T = 0 alone, both kept by respacing: DDPM's on the respaced betas
    close(terms.prior, DDPM(rp.noise.betas.tolist()).prior_kl(s.batch["image"]), rtol=1e-10, atol=1e-12)
