"""Property tests of the Monte Carlo multi-task training loss, "simple" and "vlb" (docs/math.md, sections 6-7)."""

from __future__ import annotations

import attrs
import pytest
import torch
from ddpm_reference import DDPM
from hypothesis import given
from hypothesis import strategies as st
from test_math_elbo import GaussianVector, GridImage, Setup, ToyDenoiser, setup_for
from test_math_forward import Case, close, inputs_for, processes, random_t

from mtd_core.diffusion.forward import ForwardProcess
from mtd_core.diffusion.loss import training_loss
from mtd_core.diffusion.noise import NoiseSchedule
from mtd_core.diffusion.weights import WindowedLambda
from mtd_core.errors import ConfigError
from mtd_core.modality import LatentSpec

KINDS = st.sampled_from(["simple", "vlb"])
MAIN = {"simple": "eps", "vlb": "vlb"}  # the name of the base term in LossOutput.terms


def loss_weights(names: tuple[str, ...]) -> st.SearchStrategy[dict[str, float]]:
    """A loss weight c_i in [0, 3] for each aggregated modality and c_0 for the base ("image"; 1, 0 or any)."""
    c0 = st.one_of(st.just(1.0), st.just(0.0), st.floats(0.0, 3.0))
    return st.fixed_dictionaries({"image": c0, **{n: st.floats(0.0, 3.0) for n in names}})


def decoding_terms(s: Setup, den: ToyDenoiser, z_t: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """-log p(x_i | z_t) / D_i per example for each aggregated modality, from the heads at (z_t, t)."""
    preds = den(z_t, t).preds
    return {n: s.modalities[n].loss(preds[n], s.batch[n]) / s.batch[n][0].numel() for n in preds}


@given(processes(zero=True, max_n=3), KINDS, st.data())
def test_the_loss_reduces_to_ddpm_with_the_same_denoiser(case: Case, kind: str, data: st.DataObject) -> None:
    fp, x = case.fp, inputs_for(case)
    weights = data.draw(loss_weights(fp.names))
    s = setup_for(case, x, loss_weights=weights)
    den = ToyDenoiser(fp, s.batch["image"], x.enc)
    t = random_t(case)  # includes t = 1, where "vlb" is the reconstruction term L_0
    out = training_loss(fp, den, s.modalities, s.batch, s.encode, kind=kind, t=t, eps=x.eps)
    (z_t, t_net), = den.calls
    assert torch.equal(t_net, t)
    ref = DDPM(fp.noise.betas.tolist())
    model = lambda z, tt: den(z, tt).eps  # noqa: E731
    ref_main = (ref.loss_simple if kind == "simple" else ref.loss_vlb)(model, s.batch["image"], t, x.eps)
    close(z_t, ref.q_sample(s.batch["image"], t, x.eps))
    assert set(out.terms) == {MAIN[kind], *fp.names}
    assert abs(out.terms[MAIN[kind]] - float(ref_main.mean())) <= 1e-6 * (1 + abs(float(ref_main.mean())))
    dec = decoding_terms(s, den, z_t, t)  # the heads are read at the sampled t, not at t = 1
    for n in fp.names:
        assert abs(out.terms[n] - float(dec[n].mean())) <= 1e-9 * (1 + abs(out.terms[n]))
    expected = (weights["image"] * ref_main + sum((weights[n] * dec[n] for n in fp.names),
                                                  torch.zeros_like(ref_main))).mean()
    close(out.loss.double(), expected, rtol=1e-6, atol=1e-6)


@given(processes(min_n=1, max_n=3), KINDS)
def test_every_term_is_per_dimension(case: Case, kind: str) -> None:
    """Doubling every example (the latent and each modality's data, side by side) leaves every term unchanged:
    the base term is divided by D and each decoding term by D_i."""
    fp, x = case.fp, inputs_for(case)
    s = setup_for(case, x)
    t = random_t(case)
    one = training_loss(fp, ToyDenoiser(fp, s.batch["image"], x.enc), s.modalities, s.batch, s.encode, kind=kind,
                        t=t, eps=x.eps)
    wide = (case.shape[1], case.shape[2], 2 * case.shape[3])

    def twice(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([v, v], dim=-1)

    mods = {"image": GridImage(name="image", shape=wide),
            **{n: GaussianVector(name=n, weights=case.weights[n], shape=wide) for n in fp.names}}
    s2 = Setup(mods, {k: twice(v) for k, v in s.batch.items()}, LatentSpec(wide))
    enc2 = {n: twice(e) for n, e in x.enc.items()}
    two = training_loss(fp, ToyDenoiser(fp, s2.batch["image"], enc2), s2.modalities, s2.batch, s2.encode, kind=kind,
                        t=t, eps=twice(x.eps))
    close(two.loss.double(), one.loss.double(), rtol=1e-6, atol=1e-6)
    for k, v in one.terms.items():
        assert abs(two.terms[k] - v) <= 1e-6 * (1 + abs(v)), k


@given(processes(min_n=2, max_n=4), KINDS, st.data())
def test_the_order_of_the_modalities_does_not_change_the_loss(case: Case, kind: str, data: st.DataObject) -> None:
    names = data.draw(st.permutations(list(case.weights)))
    if names == list(case.weights):
        names = names[1:] + names[:1]
    weights = data.draw(loss_weights(tuple(names)))
    x = inputs_for(case)
    t = random_t(case)
    outs = []
    for order in (list(case.weights), names):
        fp = ForwardProcess(case.fp.noise, {n: case.weights[n] for n in order})
        s = setup_for(case, x, order, weights)
        outs.append(training_loss(fp, ToyDenoiser(fp, s.batch["image"], x.enc), s.modalities, s.batch, s.encode,
                                  kind=kind, t=t, eps=x.eps))
    close(outs[1].loss, outs[0].loss, rtol=1e-6, atol=1e-6)
    assert outs[1].terms == pytest.approx(outs[0].terms, rel=1e-6, abs=1e-9)


@given(processes(max_n=3, max_T=40), KINDS)
def test_float32_loss_stays_close_to_float64(case: Case, kind: str) -> None:
    x64 = inputs_for(case)
    t = random_t(case)
    losses = []
    for dtype in (torch.float64, torch.float32):
        x = x64.to(dtype)
        s = setup_for(case, x)
        s = attrs.evolve(s, batch={k: v.to(dtype) for k, v in s.batch.items()})
        out = training_loss(case.fp, ToyDenoiser(case.fp, s.batch["image"], x.enc), s.modalities, s.batch, s.encode,
                            kind=kind, t=t, eps=x.eps)
        assert torch.isfinite(out.loss)
        losses.append(out.loss.double())
    # vlb divides by beta_t (down to ~1e-6): float32 keeps 2-3 significant digits there (0.3% seen with lambda = 2)
    close(losses[1], losses[0], rtol=1e-2 if kind == "vlb" else 1e-5, atol=1e-4)


# -- training behaviour ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["simple", "vlb"])
def test_gradients_reach_the_encoders_at_every_t(kind: str) -> None:
    fp = ForwardProcess(NoiseSchedule.linear(100), {"label": WindowedLambda(peak=1.0, start=0.0, center=0.5, end=0.9)})
    case = Case(fp, {"label": WindowedLambda(peak=1.0, start=0.0, center=0.5, end=0.9)}, (4, 1, 2, 2), 3)
    x = inputs_for(case)
    s = setup_for(case, x)
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)  # a learnable encoder: E(x) = scale * x

    def encode(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return batch["image"], {"label": scale * batch["label"][:, 0]}

    t = torch.tensor([1, 2, 50, 100])  # L_0, the first KL, the window's peak and lambda_T = 0
    out = training_loss(fp, ToyDenoiser(fp, s.batch["image"], x.enc), s.modalities, s.batch, encode, kind=kind, t=t,
                        eps=x.eps)
    out.loss.backward()
    assert scale.grad is not None and torch.isfinite(scale.grad) and scale.grad != 0


def test_drawn_timesteps_and_noise_are_reproducible() -> None:
    fp = ForwardProcess(NoiseSchedule.linear(50), {"label": WindowedLambda()})
    case = Case(fp, {"label": WindowedLambda()}, (64, 1, 2, 2), 5)
    x = inputs_for(case)
    s = setup_for(case, x)

    def run(seed: int) -> tuple[float, torch.Tensor]:
        den = ToyDenoiser(fp, s.batch["image"], x.enc)
        out = training_loss(fp, den, s.modalities, s.batch, s.encode, kind="vlb",
                            generator=torch.Generator().manual_seed(seed))
        return float(out.loss), den.calls[0][1]

    (a, ta), (b, tb), (c, _) = run(0), run(0), run(1)
    assert a == b and torch.equal(ta, tb) and a != c
    assert int(ta.min()) >= 1 and int(ta.max()) <= 50 and ta.unique().numel() > 10


def test_a_respaced_process_feeds_the_network_the_original_timesteps() -> None:
    fp = ForwardProcess(NoiseSchedule.linear(100), {"label": WindowedLambda()}).respace([25, 50, 75, 100])
    case = Case(fp, {"label": WindowedLambda()}, (4, 1, 2, 2), 0)
    x = inputs_for(case)
    s = setup_for(case, x)
    den = ToyDenoiser(fp, s.batch["image"], x.enc)
    training_loss(fp, den, s.modalities, s.batch, s.encode, t=torch.tensor([1, 2, 3, 4]), eps=x.eps)
    assert den.calls[0][1].tolist() == [25, 50, 75, 100]


def test_an_unknown_loss_kind_is_rejected() -> None:
    fp = ForwardProcess(NoiseSchedule.linear(50), {})
    with pytest.raises(ConfigError, match=r"loss kind must be one of \('simple', 'vlb'\), got 'hybrid'"):
        training_loss(fp, None, {}, {}, lambda b: (torch.zeros(1), {}), kind="hybrid")  # type: ignore[arg-type]
