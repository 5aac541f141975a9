"""Property tests of the forward aggregation process: kernel, marginal, posterior, reverse mean, respacing.

docs/math.md sections 3, 4, 7 and 8. Hypothesis draws the noise schedule, every modality's weight schedule,
the number of aggregated modalities (0 to 5), the latent shape, the dtype and the random tensors' seed.
The strategies ``processes`` and ``inputs_for`` are reused by tests/test_math_elbo.py and test_math_loss.py.
"""

from __future__ import annotations

import attrs
import pytest
import torch
from ddpm_reference import DDPM
from hypothesis import given
from hypothesis import strategies as st
from test_math_schedules import noise_schedules, weight_schedules

from mtd_core.diffusion.forward import ForwardProcess
from mtd_core.diffusion.noise import NoiseSchedule
from mtd_core.diffusion.weights import WeightSchedule, WindowedLambda, ZeroWeight, lambda_from_w, w_from_lambda
from mtd_core.errors import ModalityDataError, ScheduleError

NAMES = ("label", "caption", "mask", "rep", "depth")


@attrs.frozen
class Case:
    """A forward process drawn by hypothesis, with what it was built from.

    Attributes:
        fp: the process (possibly respaced, see ``kept``).
        weights: aggregated modality name -> weight schedule, in construction order.
        shape: the latent shape of one batch (B, C, H, W).
        seed: seeds the random tensors of :func:`inputs_for`.
    """

    fp: ForwardProcess
    weights: dict[str, WeightSchedule]
    shape: tuple[int, int, int, int]
    seed: int


@attrs.frozen
class Inputs:
    """Random tensors for one case: z_0, the encodings E_i(x_i), a noise draw and an arbitrary z_t."""

    z0: torch.Tensor
    enc: dict[str, torch.Tensor]
    eps: torch.Tensor
    z_any: torch.Tensor

    def to(self, dtype: torch.dtype) -> Inputs:
        """The same tensors in ``dtype``."""
        return Inputs(self.z0.to(dtype), {n: e.to(dtype) for n, e in self.enc.items()}, self.eps.to(dtype),
                      self.z_any.to(dtype))


@st.composite
def processes(draw: st.DrawFn, min_n: int = 0, max_n: int = 5, max_T: int = 60, zero: bool = False,
              allow_free_w: bool = True, max_beta: float = 0.9) -> Case:
    """A ForwardProcess with ``min_n``..``max_n`` aggregated modalities (all ZeroWeight if ``zero``)."""
    noise = draw(noise_schedules(max_T=max_T, max_beta=max_beta))
    names = draw(st.permutations(NAMES))[: draw(st.integers(min_n, max_n))]
    weights = {n: ZeroWeight() if zero else draw(weight_schedules(noise.T, allow_free_w)) for n in names}
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    return Case(ForwardProcess(noise, weights), weights, shape, draw(st.integers(0, 2**31 - 1)))


def inputs_for(case: Case, dtype: torch.dtype = torch.float64) -> Inputs:
    """Random z_0, unit-RMS encodings (as the modalities produce), eps and z_t for ``case``."""
    g = torch.Generator().manual_seed(case.seed)

    def randn() -> torch.Tensor:
        return torch.randn(case.shape, generator=g, dtype=torch.float64)

    def unit_rms(e: torch.Tensor) -> torch.Tensor:
        return e / e.pow(2).flatten(1).mean(1).sqrt().reshape(-1, 1, 1, 1)

    enc = {n: unit_rms(randn()) for n in case.fp.names}
    return Inputs(randn().clamp(-1, 1), enc, randn(), 3 * randn()).to(dtype)


def random_t(case: Case, low: int = 1) -> torch.Tensor:
    """One timestep per example in low..T, from the case's seed."""
    g = torch.Generator().manual_seed(case.seed + 1)
    return torch.randint(low, case.fp.T + 1, (case.shape[0],), generator=g)


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-10, atol: float = 1e-10) -> None:
    """assert_close with an absolute tolerance scaled by the expected values' magnitude."""
    scale = 1.0 + float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale)


# -- marginal = the kernel composed step by step ---------------------------------------------------------------


@given(processes())
def test_marginal_equals_the_kernel_composed_step_by_step(case: Case) -> None:
    fp, x = case.fp, inputs_for(case)
    zeros = torch.zeros_like(x.z0)
    no_enc = {n: zeros for n in fp.names}
    mean, var = x.z0, zeros  # q(z_0 | z_0, X) is a point mass
    for t in range(1, fp.T + 1):
        # z_t = m(z_{t-1}) + sqrt(1 - alpha_t) n with m affine: push the Gaussian N(mean, var) through it
        k_mean, k_var = fp.kernel(mean, x.enc, t)
        slope = fp.kernel(torch.ones_like(zeros), no_enc, t)[0] - fp.kernel(zeros, no_enc, t)[0]
        mean, var = k_mean, slope**2 * var + k_var
        m_mean, m_var = fp.marginal(x.z0, x.enc, t)
        close(m_mean, mean)
        close(m_var, var)
        close(m_var, (1 - fp.abar[t]).expand_as(var))
    m0, v0 = fp.marginal(x.z0, x.enc, 0)
    assert torch.equal(m0, x.z0) and not v0.any()


@given(processes())
def test_sampling_and_noise_recovery_invert_each_other(case: Case) -> None:
    fp, x = case.fp, inputs_for(case)
    t = random_t(case)
    z_t = fp.q_sample(x.z0, x.enc, t, x.eps)
    mean, var = fp.marginal(x.z0, x.enc, t)
    close(z_t, mean + var.sqrt() * x.eps)
    close(fp.eps_from_z0(z_t, x.z0, x.enc, t), x.eps, rtol=1e-8, atol=1e-8)
    close(fp.z0_from_eps(z_t, x.eps, x.enc, t), x.z0, rtol=1e-6, atol=1e-6)  # divides by sqrt(abar_t)
    a = fp.aggregate(x.enc, t, x.z0)
    inj = fp.injected(x.enc, t, x.z0)
    B, N = case.shape[0], len(fp.names)
    w = fp.w[:, t].T.reshape(B, N, 1, 1, 1)  # w_t^(i) per example
    lam = fp.lam[:, t].T.reshape(B, N, 1, 1, 1)
    stacked = torch.stack([x.enc[n] for n in fp.names], 1) if N else torch.zeros(B, 0, *case.shape[1:],
                                                                                 dtype=torch.float64)
    close(a, (w * stacked).sum(1))  # a_t = sum_i w_t^(i) E_i
    close(inj, (lam * stacked).sum(1))  # sum_i lambda_t^(i) E_i


# -- posterior ---------------------------------------------------------------------------------------------------


@given(processes())
def test_posterior_equals_gaussian_conditioning(case: Case) -> None:
    """Per dimension, (z_{t-1}, z_t) given z_0 and X is jointly Gaussian; condition on z_t with the textbook
    formula: mean = m1 + S12 / S22 (z_t - m2), var = S11 - S12^2 / S22."""
    fp, x = case.fp, inputs_for(case)
    t = random_t(case)
    zeros = torch.zeros_like(x.z0)
    no_enc = {n: zeros for n in fp.names}
    m1, s11 = fp.marginal(x.z0, x.enc, t - 1)  # z_{t-1} ~ N(m1, s11)
    m2, k_var = fp.kernel(m1, x.enc, t)  # z_t = slope z_{t-1} + c + noise(k_var)
    slope = fp.kernel(torch.ones_like(zeros), no_enc, t)[0] - fp.kernel(zeros, no_enc, t)[0]
    s12, s22 = slope * s11, slope**2 * s11 + k_var
    mean, var = fp.posterior(x.z_any, x.z0, x.enc, t)
    close(mean, m1 + s12 / s22 * (x.z_any - m2), rtol=1e-8, atol=1e-8)
    close(var, s11 - s12**2 / s22, rtol=1e-8, atol=1e-12)
    close(var, fp.reverse_variance(t, x.z0, "beta_tilde"), rtol=1e-12, atol=0)


@given(processes())
def test_the_two_posterior_mean_forms_agree(case: Case) -> None:
    fp, x = case.fp, inputs_for(case)
    t = random_t(case)
    z_t = fp.q_sample(x.z0, x.enc, t, x.eps)
    close(fp.posterior_mean_eps(z_t, x.eps, x.enc, t), fp.posterior(z_t, x.z0, x.enc, t)[0], rtol=1e-8, atol=1e-8)


@given(processes())
def test_an_oracle_denoiser_makes_the_reverse_mean_the_posterior_mean(case: Case) -> None:
    """For any z_t, eps_theta = the total noise of z_t given z_0 and E_i(xhat_i) = E_i(x_i) give mu_theta = mu~_t."""
    fp, x = case.fp, inputs_for(case)
    t = random_t(case)
    eps_oracle = fp.eps_from_z0(x.z_any, x.z0, x.enc, t)
    close(fp.reverse_mean(x.z_any, eps_oracle, x.enc, t), fp.posterior(x.z_any, x.z0, x.enc, t)[0],
          rtol=1e-8, atol=1e-8)
    if fp.names and float(fp.w[:, t].abs().max()) > 1e-3:  # a wrong encoding injected at t moves mu_theta
        # shift one modality only (shifts of several could cancel): the one with the largest |w_t| at any example's t
        worst = fp.names[int(fp.w[:, t].abs().reshape(len(fp.names), -1).amax(1).argmax())]
        wrong = {n: e + 1.0 if n == worst else e for n, e in x.enc.items()}
        mu_wrong = fp.reverse_mean(x.z_any, eps_oracle, wrong, t)
        assert not torch.allclose(mu_wrong, fp.posterior(x.z_any, x.z0, x.enc, t)[0])


# -- invariances and precision -----------------------------------------------------------------------------------


def all_outputs(fp: ForwardProcess, x: Inputs, t: torch.Tensor) -> list[torch.Tensor]:
    """Every formula of the process evaluated once at t (for comparisons between equivalent processes)."""
    t = t.clamp(min=1)
    return [
        fp.aggregate(x.enc, t, x.z0), fp.injected(x.enc, t, x.z0), *fp.kernel(x.z_any, x.enc, t),
        *fp.marginal(x.z0, x.enc, t), fp.q_sample(x.z0, x.enc, t, x.eps), *fp.posterior(x.z_any, x.z0, x.enc, t),
        fp.posterior_mean_eps(x.z_any, x.eps, x.enc, t), fp.reverse_mean(x.z_any, x.eps, x.enc, t),
        fp.eps_from_z0(x.z_any, x.z0, x.enc, t), fp.reverse_variance(t, x.z0, "beta"),
    ]


@given(processes(min_n=2), st.data())
def test_the_order_of_the_modalities_changes_nothing(case: Case, data: st.DataObject) -> None:
    names = data.draw(st.permutations(list(case.weights)))
    if names == list(case.weights):
        names = names[1:] + names[:1]  # a different order for sure
    permuted = ForwardProcess(case.fp.noise, {n: case.weights[n] for n in names})
    assert permuted.names == tuple(names)
    x = inputs_for(case)
    x_perm = attrs.evolve(x, enc={n: x.enc[n] for n in reversed(names)})
    t = random_t(case)
    for a, b in zip(all_outputs(case.fp, x, t), all_outputs(permuted, x_perm, t), strict=True):
        close(b, a, rtol=1e-12, atol=1e-12)


@given(processes())
def test_float32_stays_close_to_float64(case: Case) -> None:
    x64 = inputs_for(case)
    x32 = x64.to(torch.float32)
    t = random_t(case)
    for a, b in zip(all_outputs(case.fp, x64, t), all_outputs(case.fp, x32, t), strict=True):
        assert b.dtype == torch.float32
        close(b.double(), a, rtol=1e-4, atol=1e-5)


# -- N = 1 or every w = 0 is DDPM ------------------------------------------------------------------------------------


@given(processes(zero=True))
def test_without_injected_modalities_the_process_is_ddpm(case: Case) -> None:
    fp, x = case.fp, inputs_for(case)
    ref = DDPM(fp.noise.betas.tolist())
    t = random_t(case)
    mean, var = fp.marginal(x.z0, x.enc, t)
    ref_mean, ref_var = ref.q_mean_var(x.z0, t)
    close(mean, ref_mean)
    close(var, ref_var)
    close(fp.q_sample(x.z0, x.enc, t, x.eps), ref.q_sample(x.z0, t, x.eps))
    mean, var = fp.posterior(x.z_any, x.z0, x.enc, t)
    ref_mean, ref_var = ref.q_posterior(x.z0, x.z_any, t)
    close(mean, ref_mean, rtol=1e-9, atol=1e-9)
    close(var, ref_var, rtol=1e-9, atol=1e-12)
    close(fp.reverse_mean(x.z_any, x.eps, x.enc, t), ref.p_mean(x.z_any, t, x.eps), rtol=1e-9, atol=1e-9)
    for kind in ("beta", "beta_tilde"):
        close(fp.reverse_variance(t, x.z0, kind), ref.sigma2(t, x.z0, kind).expand_as(x.z0), rtol=1e-9, atol=1e-12)
    # the encodings of modalities with w = 0 have no effect at all
    other = {n: 5 * e for n, e in x.enc.items()}
    assert torch.equal(fp.posterior(x.z_any, x.z0, other, t)[0], fp.posterior(x.z_any, x.z0, x.enc, t)[0])


# -- respacing ---------------------------------------------------------------------------------------------------------


@given(processes(max_n=3, max_beta=0.3), st.data())  # abar_T >= 1e-9: every jump is well above float64 resolution
def test_respacing_keeps_the_marginals_at_kept_steps(case: Case, data: st.DataObject) -> None:
    fp, x = case.fp, inputs_for(case)
    kept = sorted(data.draw(st.sets(st.integers(1, fp.T), min_size=1)))
    rp = fp.respace(kept)
    K = len(kept)
    assert rp.T == K and rp.names == fp.names
    assert rp.timesteps.tolist() == [0, *kept]
    assert torch.equal(rp.lam, fp.lam[:, [0, *kept]])  # lambda'_k = lambda_{t_k}
    # w' follows from lambda' exactly: w'_k = lambda'_k / sqrt(alpha'_k) - lambda'_{k-1}, and back
    assert torch.equal(rp.w, torch.stack([w_from_lambda(r, rp.alpha) for r in rp.lam]) if fp.names else rp.w)
    close(torch.stack([lambda_from_w(r, rp.alpha) for r in rp.w]) if fp.names else rp.lam, rp.lam)
    # abar' = 1 - beta' with beta' = 1 - abar_t / abar_s: exact to ~1e-16 absolute, not relative, when abar is tiny
    torch.testing.assert_close(rp.abar, fp.abar[[0, *kept]], rtol=1e-10, atol=1e-15)
    zeros = torch.zeros_like(x.z0)
    no_enc = {n: zeros for n in fp.names}
    mean, var = x.z0, zeros
    for k, t in enumerate(kept, start=1):
        close(torch.stack(rp.marginal(x.z0, x.enc, k)), torch.stack(fp.marginal(x.z0, x.enc, t)))
        k_mean, k_var = rp.kernel(mean, x.enc, k)  # one jump of the respaced process
        slope = rp.kernel(torch.ones_like(zeros), no_enc, k)[0] - rp.kernel(zeros, no_enc, k)[0]
        mean, var = k_mean, slope**2 * var + k_var
        o_mean, o_var = fp.marginal(x.z0, x.enc, t)
        close(mean, o_mean, rtol=1e-9, atol=1e-9)
        close(var, o_var, rtol=1e-9, atol=1e-12)
    # respacing twice maps back to the original steps
    sub = kept[:: 2] if K > 1 else kept
    twice = rp.respace([kept.index(s) + 1 for s in sub])
    assert twice.timesteps.tolist() == [0, *sub]
    close(twice.lam, fp.lam[:, [0, *sub]], rtol=0, atol=0)


def test_respacing_rejects_bad_timesteps_naming_the_range() -> None:
    fp = ForwardProcess(NoiseSchedule.linear(100), {"label": WindowedLambda()})
    with pytest.raises(ScheduleError, match=r"strictly increasing integers in 1..100, got \[50, 20\]"):
        fp.respace([50, 20])


# -- bad input ---------------------------------------------------------------------------------------------------------


def test_missing_extra_or_misshapen_encodings_name_the_modality() -> None:
    fp = ForwardProcess(NoiseSchedule.linear(100), {"label": WindowedLambda(), "caption": WindowedLambda(peak=0.5)})
    z = torch.zeros(2, 1, 4, 4)
    good = {"label": torch.ones_like(z), "caption": torch.ones_like(z)}
    with pytest.raises(ModalityDataError, match=r"missing \['caption'\], unexpected \[\]"):
        fp.marginal(z, {"label": good["label"]}, 3)
    with pytest.raises(ModalityDataError, match=r"missing \[\], unexpected \['mask'\]"):
        fp.posterior(z, z, {**good, "mask": z}, 3)
    with pytest.raises(ModalityDataError, match=r"modality 'caption': encoding has shape \(2, 1, 2, 2\), "
                                                r"expected the latent shape \(2, 1, 4, 4\)"):
        fp.q_sample(z, {**good, "caption": torch.ones(2, 1, 2, 2)}, 3, z)


@pytest.mark.parametrize(
    ("t", "message"),
    [(101, r"t must lie in 0..100, got values in \[101, 101\]"), (torch.tensor([1, -1]), r"in \[-1, 1\]"),
     (torch.tensor([1, 2, 3]), r"shape \(2,\) \(the batch size\), got \(3,\)"), (2.5, "integer timesteps")],
)
def test_bad_timesteps_are_rejected(t: object, message: str) -> None:
    fp = ForwardProcess(NoiseSchedule.linear(100), {})
    z = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ScheduleError, match=message):
        fp.marginal(z, {}, t)  # type: ignore[arg-type]
    with pytest.raises(ScheduleError, match="'beta' or 'beta_tilde'"):
        fp.reverse_variance(1, z, "fixed")


def test_coefficients_reach_a_device_once_and_match_the_float64_tables() -> None:
    """Gathering on a device copies the tables there once (no host copy per step); the values stay the float64 ones."""
    noise = NoiseSchedule.linear(50)
    fp = ForwardProcess(noise, {"label": WindowedLambda(peak=0.5, start=0.1, center=0.4, end=0.9)})
    meta = torch.device("meta")
    tables = fp._tables(meta)
    assert fp._tables(meta) is tables and all(v.device == meta for v in tables.values())
    cpu = fp._tables(torch.device("cpu"))
    assert torch.equal(cpu["sqrt_abar"], noise.abar.sqrt()) and torch.equal(cpu["lam"], fp.lam)
    assert cpu["c0"].dtype == torch.float64 and cpu["c0"].shape == (51,) and cpu["ce"].shape == (1, 51)
