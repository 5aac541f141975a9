"""Samplers and generate(): exactness with an oracle denoiser, the three generation modes, seeding, guidance, errors.

The oracle knows z_0 and X: its eps is the true total noise of whatever z_t it is given (ForwardProcess.eps_from_z0)
and its label head is certain of a chosen class. With it, a reverse step's mean must equal the true posterior's and
DDIM with eta = 0 must land exactly on z_0.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mtd_core.types import DenoiserOutput
from mtd_core.diffusion.noise import respaced_timesteps
from mtd_core.errors import ConfigError, ModalityDataError
from mtd_core.model import MultiTaskModel
from mtd_core.plugins import hookimpl
from mtd_core.sampling import (
    BaseEstimate,
    BaseRange,
    GuidanceConfig,
    ModelDenoiser,
    Sampler,
    ddim_sigma,
    ddim_step,
    ddpm_step,
    generate,
    guided_eps,
    head_classifier,
    sample_ddim,
)
from mtd_core.sampling.denoiser import base_range
from mtd_core.sampling.options import DEFAULT_CFG_SCALE, DEFAULT_STEPS
from mtd_core.taskset import TaskSet

T = 100
CONFIG = {"modalities": [{"kind": "image", "role": "base", "size": 8}, {"kind": "label", "num_classes": 10, "hidden": 16}],
          "diffusion": {"kind": "linear", "T": T}, "aux_channels": 1,  # the label in a channel of its own
          "known_input": False,  # an untold network, whose eps is E[eps | z_t] (the label's design would tell it)
          "aux_eps": "network"}  # the backbone's own noise of that channel: retired, read as a saved config pins it
SHARED = {**CONFIG, "aux_channels": 0, "aux_eps": None}  # the encodings on the image's own channel (the paper's)
UNET = dict(channels=8, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[4], groups=4, num_heads=2)
IMPLIED = {**CONFIG, "aux_eps": "heads"}  # the auxiliary channel's noise implied by the head
DESIGNS = pytest.mark.parametrize("design", [pytest.param(CONFIG, id="separate"), pytest.param(SHARED, id="shared"),
                                             pytest.param(IMPLIED, id="separate-implied")])


class Oracle(MultiTaskModel):
    """A model that knows the truth: eps is the exact total noise of z_t given (z0, label), the head says head_y."""

    def set_truth(self, x0: torch.Tensor, y: torch.Tensor, head_y: torch.Tensor | None = None) -> None:
        self.eval()  # encodings as generate() sees them (the running RMS, not a batch's)
        self.x0, self.y = x0, y
        self.z0, self.enc = self.encode_some({"image": x0, "label": y}, ["image", "label"])
        self.head_y = y if head_y is None else head_y
        self.seen_t: list[torch.Tensor] = []

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> DenoiserOutput:
        self.seen_t.append(t.clone())
        eps = self.forward_process.eps_from_z0(z_t, self.z0, self.enc, t)
        preds = {"label": 1e4 * F.one_hot(self.head_y, 10).to(z_t.dtype)}
        if self.taskset.aux_eps == "heads":  # the auxiliary channel's noise from the head, as the model does
            implied = self._aux_eps_from_heads(z_t, t, eps, preds)
            assert torch.allclose(implied, eps, atol=1e-3)  # a certain, right head implies the true noise
            eps = implied
        return DenoiserOutput(eps=eps, preds=preds)


def oracle(n: int = 4, seed: int = 0, wrong_head: bool = False, config: dict = CONFIG) -> Oracle:
    torch.manual_seed(seed)
    model = Oracle(TaskSet.from_config(config, saved=True), "unet", UNET)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, 1, 8, 8, generator=g) * 1.8 - 0.9
    y = torch.randint(0, 10, (n,), generator=g)
    model.set_truth(x0, y, (y + 1) % 10 if wrong_head else None)
    return model


def tiny_model(seed: int = 0, config: dict = CONFIG, **unet: object) -> MultiTaskModel:
    """A real, untrained model whose zero-initialised layers are randomised so that eps is not identically 0."""
    torch.manual_seed(seed)
    model = MultiTaskModel(TaskSet.from_config(config, saved=True), "unet", {**UNET, **unet})
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return model


def noised(model: Oracle, k: int, fp, seed: int = 1) -> torch.Tensor:
    eps = torch.randn(model.z0.shape, generator=torch.Generator().manual_seed(seed))
    return fp.q_sample(model.z0, model.enc, k, eps)


# -- single steps with the oracle ---------------------------------------------------------------------------
@settings(max_examples=20)
@given(steps=st.integers(1, T), frac=st.floats(0.0, 1.0), conditional=st.booleans(), shared=st.booleans())
def test_ancestral_mean_equals_the_true_posterior_mean(steps, frac, conditional, shared):
    # in conditional mode the head is wrong: the true encoding must be used
    model = oracle(wrong_head=conditional, config=SHARED if shared else CONFIG)
    fp = model.forward_process.respace(respaced_timesteps(T, steps))
    k = 1 + round(frac * (fp.T - 1))
    z_t = noised(model, k, fp)
    pred = ModelDenoiser(model, fp, model.enc if conditional else {}, conditioning="inject")(z_t, k)
    mean = ddpm_step(fp, z_t, k, pred.z0, pred.enc).z_prev
    post_mean, post_var = fp.posterior(z_t, model.z0, model.enc, k)
    assert torch.allclose(mean, post_mean, atol=1e-4)
    assert torch.allclose(fp.reverse_variance(k, z_t, "beta_tilde"), post_var)


@settings(max_examples=20)
@given(t=st.integers(1, T), conditional=st.booleans())
def test_ddim_with_eta_0_recovers_z0_in_one_step_from_any_t(t, conditional):
    model = oracle(wrong_head=conditional)
    fp = model.forward_process.respace([t])  # one jump: t -> 0
    z_t = noised(model, 1, fp)
    pred = ModelDenoiser(model, fp, model.enc if conditional else {}, conditioning="inject")(z_t, 1)
    assert model.seen_t[-1].tolist() == [t] * 4  # the network sees the original timestep
    res = ddim_step(fp, z_t, 1, pred.z0, pred.eps, pred.enc, eta=0.0)
    assert torch.allclose(res.z_prev, model.z0, atol=2e-4) and torch.allclose(res.z0_hat, model.z0, atol=2e-4)


def test_ddim_with_eta_1_is_the_posterior():
    model = oracle()
    fp = model.forward_process.respace(respaced_timesteps(T, 10))
    for k in (2, 5, 10):
        z_t = noised(model, k, fp)
        pred = ModelDenoiser(model, fp, {})(z_t, k)
        res = ddim_step(fp, z_t, k, pred.z0, pred.eps, pred.enc, noise=torch.zeros_like(z_t), eta=1.0)
        post_mean, _ = fp.posterior(z_t, model.z0, model.enc, k)
        assert torch.allclose(res.z_prev, post_mean, atol=1e-4)
        assert ddim_sigma(fp, k, 1.0) ** 2 == pytest.approx(float(fp.beta_tilde[k]), rel=1e-9)


def test_a_wrong_head_corrupts_the_base_estimate_only_on_shared_channels():
    # shared: the predicted encoding of a wrong label is subtracted from the image's channel, so z_0 is missed;
    # separate: the label lives in its own channel, the image's estimate never subtracts it
    for config, recovered in ((SHARED, False), (CONFIG, True)):
        model = oracle(wrong_head=True, config=config)
        fp = model.forward_process.respace([40])
        z_t = noised(model, 1, fp)
        pred = ModelDenoiser(model, fp, {})(z_t, 1)
        res = ddim_step(fp, z_t, 1, pred.z0, pred.eps, pred.enc)
        assert torch.allclose(res.z_prev, model.z0, atol=1e-3) == recovered


# -- generate() with the oracle -------------------------------------------------------------------------------
SAMPLERS = [("ddim", {}), ("ddim", {"eta": 0.7}), ("ddpm", {}), ("heun", {}), ("dpmpp_2m", {}), ("dpmpp_2m_sde", {})]


@DESIGNS
@pytest.mark.parametrize("sampler, options", SAMPLERS)
def test_generate_joint_with_the_oracle_returns_the_truth(design, sampler, options):
    model = oracle(config=design)
    out = generate(model, n=4, sampler=sampler, steps=8, generator=torch.Generator().manual_seed(0), progress=False,
                   **options)
    assert out.mode == "joint" and list(out.samples) == ["image", "label"]
    assert torch.allclose(out.samples["image"], model.x0, atol=2e-4)
    assert torch.equal(out.samples["label"], model.y)
    assert set(out.predictions) == {"label"}


@pytest.mark.parametrize("conditioning", ["inject", "exact"])
def test_generate_conditional_inject_uses_the_observed_encodings_and_returns_them_unchanged(conditioning):
    model = oracle(wrong_head=True)
    y = model.y.clone()
    out = generate(model, given={"label": y}, steps=6, generator=torch.Generator().manual_seed(0), progress=False,
                   conditioning=conditioning)
    assert out.mode == "conditional"
    assert out.samples["label"] is y and torch.equal(y, model.y)
    assert torch.allclose(out.samples["image"], model.x0, atol=2e-4)
    assert out.predictions == {}


@DESIGNS
@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "heun", "dpmpp_2m", "dpmpp_2m_sde"])
def test_generate_conditional_replace_with_the_oracle_returns_the_truth(design, sampler):
    model = oracle(config=design)
    out = generate(model, given={"label": model.y.clone()}, sampler=sampler, steps=6,
                   generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.allclose(out.samples["image"], model.x0, atol=2e-4)


@settings(max_examples=15)
@given(steps=st.integers(2, T), frac=st.floats(0.0, 1.0))
def test_replace_keeps_the_networks_z0_estimate_and_steps_with_the_true_encodings(steps, frac):
    model = oracle(wrong_head=True)  # its decomposition of z_t disagrees with the observed label
    fp = model.forward_process.respace(respaced_timesteps(T, steps))
    k = 1 + round(frac * (fp.T - 1))
    z_t = noised(model, k, fp)
    own = ModelDenoiser(model, fp, {})(z_t, k)
    pred = ModelDenoiser(model, fp, model.enc)(z_t, k)
    assert pred.z_t is not None
    if fp.lam[0, k] > 1e-3:  # where the label is injected at all, replacement changes the state
        assert not torch.allclose(pred.z_t, z_t)
    res = ddim_step(fp, pred.z_t, k, pred.z0, pred.eps, pred.enc)
    assert torch.allclose(res.z0_hat, fp.z0_from_eps(z_t, own.eps, own.enc, k), atol=1e-4)
    ab = fp.abar[k - 1].item()
    want = ab**0.5 * res.z0_hat + fp.injected(model.enc, k - 1, z_t) + (1 - ab) ** 0.5 * pred.eps
    assert torch.allclose(res.z_prev, want, atol=1e-4)


def test_encoding_temperature_tempers_only_the_encodings_of_the_step():
    model = tiny_model()
    fp = model.forward_process.respace(respaced_timesteps(T, 10))
    z_t = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    k = 6  # inside the label's window: lambda_t > 0
    soft = ModelDenoiser(model, fp, {})(z_t, k)
    cold = ModelDenoiser(model, fp, {}, temperature={"label": 1e-4})(z_t, k)
    assert torch.equal(cold.z0, soft.z0) and torch.equal(cold.preds["label"], soft.preds["label"])
    hard = model.predicted_encodings({"label": 1e4 * F.one_hot(soft.preds["label"].argmax(1), 10).float()})
    torch.testing.assert_close(cold.enc["label"], hard["label"])
    assert not torch.allclose(soft.enc["label"], hard["label"])


def test_generate_with_an_encoding_temperature_changes_the_trajectory_not_the_contract():
    model = tiny_model()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    kw = dict(n=3, steps=5, progress=False, joint="flow")  # a committed label has no encoding to temper
    base = generate(model, generator=g(), **kw)
    cold = generate(model, generator=g(), encoding_temperature={"label": 0.05}, **kw)
    same = generate(model, generator=g(), encoding_temperature={"label": 1.0}, **kw)
    assert torch.equal(same.samples["image"], base.samples["image"])
    assert not torch.equal(cold.samples["image"], base.samples["image"])
    assert torch.equal(cold.samples["label"], cold.predictions["label"].argmax(1))


def test_a_kinds_default_encoding_temperature_applies_where_the_option_is_silent():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    kw = dict(n=3, steps=5, progress=False, joint="flow")
    model = tiny_model()
    base = generate(model, generator=g(), **kw)
    cold = generate(model, generator=g(), encoding_temperature={"label": 0.05}, **kw)
    model.taskset["label"].default_encoding_temperature = 0.05  # what a kind's class attribute sets
    assert torch.equal(generate(model, generator=g(), **kw).samples["image"], cold.samples["image"])
    named = generate(model, generator=g(), encoding_temperature={"label": 1.0}, **kw)
    assert torch.equal(named.samples["image"], base.samples["image"])  # the option, where it names one, wins
    committed = generate(model, generator=g(), n=3, steps=5, progress=False)  # nothing to temper: no error
    assert committed.samples["image"].shape == base.samples["image"].shape
    read = generate(model, given={"image": base.samples["image"]}, progress=False)  # nor in read-out mode
    assert read.mode == "readout"


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan")])
def test_a_kinds_default_encoding_temperature_must_be_positive(tau):
    model = tiny_model()
    model.taskset["label"].default_encoding_temperature = tau
    with pytest.raises(ConfigError, match=r"modality 'label' \(label, mtd_plugins.label\): "
                                          r"default_encoding_temperature must be a positive finite number"):
        generate(model, n=1, steps=2, progress=False, joint="flow")


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=2, encoding_temperature={"labels": 0.5}), r"'labels', which is not a generated aggregated modality "
                                                      r"\(did you mean 'label'\?\); those are \['label'\]"),
    (dict(n=2, encoding_temperature={"image": 0.5}), r"'image', which is not a generated aggregated modality"),
    (dict(given={"label": torch.tensor([1])}, encoding_temperature={"label": 0.5}), r"those are \[\]"),
    (dict(n=2, encoding_temperature={"label": 0.0}), r"encoding_temperature\['label'\] must be a positive finite"),
    (dict(n=2, encoding_temperature={"label": float("inf")}), r"must be a positive finite number, got inf"),
    (dict(given={"image": torch.zeros(1, 1, 8, 8)}, encoding_temperature={"label": 0.5}),
     r"encoding_temperature needs a reverse process"),
])
def test_encoding_temperature_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        generate(tiny_model(), progress=False, **kwargs)


def test_encoding_temperature_of_a_non_categorical_modality_is_refused():
    config = {"modalities": [{"kind": "image", "role": "base", "size": 8},
                             {"kind": "image", "name": "edges", "role": "aggregated", "size": 8}],
              "diffusion": {"kind": "linear", "T": T}}
    model = MultiTaskModel(TaskSet.from_config(config, saved=True), "unet", UNET)
    with pytest.raises(ConfigError, match=r"modality 'edges' \(image\) has categorical predictions only if it "
                                          r"overrides Modality.temper"):
        generate(model, n=1, progress=False, encoding_temperature={"edges": 0.5})


def test_unknown_conditioning_is_a_config_error():
    with pytest.raises(ConfigError, match="conditioning must be one of"):
        generate(oracle(), n=4, conditioning="paste", progress=False)


def test_the_network_sees_the_original_respaced_timesteps_in_order():
    model = oracle()
    steps = []
    generate(model, n=4, steps=7, callback=steps.append, progress=False, sampler="ddim", spacing="uniform",
             joint="flow")
    want = respaced_timesteps(T, 7).flip(0).tolist()
    assert [t[0].item() for t in model.seen_t] == want
    assert [s.t for s in steps] == want and [s.index for s in steps] == list(range(7, 0, -1))
    assert all(a.z_next is b.z_t for a, b in zip(steps, steps[1:]))
    assert torch.allclose(steps[0].z0_hat, model.z0, atol=2e-4)


@pytest.mark.parametrize("spacing", ["leading", "quad", "logsnr", "karras"])
def test_spacing_chooses_the_timesteps_the_network_sees(spacing):
    model = oracle()
    out = generate(model, n=4, steps=7, spacing=spacing, progress=False, joint="flow")
    want = respaced_timesteps(T, 7, spacing, model.forward_process.abar).flip(0).tolist()
    assert [t[0].item() for t in model.seen_t] == want
    assert torch.allclose(out.samples["image"], model.x0, atol=2e-4)  # the oracle's DDIM is exact anyway


def test_readout_reads_the_heads_at_a_small_t_and_returns_the_base_unchanged():
    model = oracle(wrong_head=True)
    image = model.x0.clone()
    out = generate(model, given={"image": image}, generator=torch.Generator().manual_seed(0), progress=False,
                   read_t=0.05)
    assert out.mode == "readout" and out.samples["image"] is image
    assert torch.equal(out.samples["label"], model.head_y)
    assert [t.tolist() for t in model.seen_t] == [[5] * 4]
    model.seen_t.clear()
    out = generate(model, given={"image": image}, progress=False, read_t=[0.01, 0.1, 0.5])
    assert [t[0].item() for t in model.seen_t] == [1, 10, 50]
    assert torch.equal(out.samples["label"], model.head_y)
    assert torch.allclose(out.predictions["label"], 1e4 * F.one_hot(model.head_y, 10).float())


def test_readout_default_t_is_small():
    model = oracle()
    generate(model, given={"image": model.x0}, progress=False)
    assert model.seen_t[0][0].item() == round(0.02 * T)


# -- generate() with a real (untrained) model --------------------------------------------------------------
def test_joint_samples_respect_every_data_spec():
    out = generate(tiny_model(), n=5, steps=4, generator=torch.Generator().manual_seed(0), progress=False)
    image, label = out.samples["image"], out.samples["label"]
    assert image.shape == (5, 1, 8, 8) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    assert label.shape == (5,) and label.dtype == torch.int64 and 0 <= label.min() and label.max() <= 9
    assert out.predictions["label"].shape == (5, 10)


@pytest.mark.parametrize("kwargs", [dict(sampler="ddim", eta=0.5), dict(sampler="ddpm", variance="beta"),
                                    dict(sampler="ddim", given={"label": torch.tensor([1, 2, 3])}),
                                    dict(sampler="ddim", guidance=GuidanceConfig("label", 4, 3.0))])
def test_seeded_generation_is_bit_for_bit_repeatable(kwargs):
    model = tiny_model()
    kwargs = {"n": 3, "steps": 5, "progress": False, **kwargs}
    a = generate(model, generator=torch.Generator().manual_seed(7), **kwargs).samples
    b = generate(model, generator=torch.Generator().manual_seed(7), **kwargs).samples
    c = generate(model, generator=torch.Generator().manual_seed(8), **kwargs).samples
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["image"], c["image"])


def test_generate_restores_the_training_mode():
    model = tiny_model()
    model.train()
    generate(model, n=2, steps=2, progress=False)
    assert model.training
    model.eval()
    generate(model, n=2, steps=2, progress=False)
    assert not model.training


# -- guidance ------------------------------------------------------------------------------------------------
def test_guided_eps_is_eps_minus_scaled_gradient_of_the_heads_log_likelihood():
    model = tiny_model()
    z, t, y = torch.randn(3, 2, 8, 8), torch.tensor([30, 30, 30]), torch.tensor([1, 5, 9])
    abar = float(model.forward_process.abar[30])
    eps, preds = guided_eps(model, z, t, abar, [(model.taskset["label"], y, 2.5)])
    zz = z.clone().requires_grad_(True)
    out = model(zz, t)
    grad = torch.autograd.grad(F.log_softmax(out.preds["label"], 1)[torch.arange(3), y].sum(), zz)[0]
    assert torch.allclose(eps, out.eps - 2.5 * (1 - abar) ** 0.5 * grad, atol=1e-6)
    assert grad.abs().sum() > 0 and torch.allclose(preds["label"], out.preds["label"])


def test_an_external_classifier_reads_and_moves_only_the_base_channels():
    model = tiny_model()  # the label in an auxiliary channel of its own
    fp, k, y = model.forward_process, 30, torch.tensor([1, 5, 9])
    _, observed = model.encode_some({"label": y}, ["label"])
    z = torch.randn(3, 2, 8, 8)
    seen = []

    def classifier(x_t, t):
        seen.append(x_t.detach())
        return x_t.flatten(1)[:, :10] * 3.0

    guided = ModelDenoiser(model, fp, observed, guidance=[(model.taskset["label"], y, 2.0)],
                           classifiers={"label": classifier})(z, k)
    plain = ModelDenoiser(model, fp, observed)(z, k)
    assert torch.equal(seen[0], z[:, :1])  # the label's known part lives in the other channel
    assert torch.equal(guided.eps[:, 1:], plain.eps[:, 1:]) and not torch.allclose(guided.eps[:, :1], plain.eps[:, :1])


def test_a_classifier_model_guides_through_head_classifier_and_must_match_the_model():
    model = tiny_model()
    zero = {"kind": "label", "num_classes": 10, "hidden": 16, "weights": {"kind": "zero"}}
    clf_config = {**SHARED, "modalities": [{**CONFIG["modalities"][0], "loss_weight": 0.0}, zero]}
    clf = tiny_model(1, clf_config)
    read = head_classifier(clf, "label", model)
    x_t, t = torch.randn(3, 1, 8, 8), torch.tensor([3, 40, 90])
    assert torch.equal(read(x_t, t), clf(x_t, t).preds["label"])
    with pytest.raises(ConfigError, match=r"must read the base's state alone.*aux_channels 1"):
        head_classifier(tiny_model(), "label")  # its label lives in z_t (a channel of its own)
    with pytest.raises(ConfigError, match=r"no aggregated modality 'labl' \(did you mean 'label'\?\)"):
        head_classifier(clf, "labl")
    big = {**clf_config, "modalities": [{**clf_config["modalities"][0], "size": 16}, zero]}
    with pytest.raises(ConfigError, match=r"reads states of shape \[1, 16, 16\], the model's base has \[1, 8, 8\]"):
        head_classifier(tiny_model(1, big, attention_resolutions=[8]), "label", model)


def test_guidance_with_scale_0_changes_nothing_and_a_positive_scale_changes_the_samples():
    model = tiny_model()

    def final_z(guidance):  # z_0 before clipping to the image range
        steps = []
        generate(model, n=3, steps=4, progress=False, generator=torch.Generator().manual_seed(1), guidance=guidance,
                 callback=steps.append, joint="flow")
        return steps[-1].z_next

    plain = final_z(None)
    assert torch.equal(plain, final_z(GuidanceConfig("label", [1, 2, 3], 0.0)))
    assert not torch.allclose(plain, final_z(GuidanceConfig("label", 3, 5.0)))


def test_guidance_errors():
    model = tiny_model()
    with pytest.raises(ConfigError, match="modality 'image' is the base and has no head"):
        generate(model, n=2, guidance=GuidanceConfig("image", 0, 1.0), progress=False)
    with pytest.raises(ConfigError, match=r"no modality 'lable' \(did you mean 'label'\?\)"):
        generate(model, n=2, guidance=GuidanceConfig("lable", 0, 1.0), progress=False)
    with pytest.raises(ConfigError, match="does not apply when the base is given"):
        generate(model, given={"image": torch.zeros(2, 1, 8, 8)}, guidance=GuidanceConfig("label", 0, 1.0), progress=False)
    with pytest.raises(ConfigError, match="the target has 3 examples, the batch has 2"):
        generate(model, n=2, guidance=GuidanceConfig("label", [1, 2, 3], 1.0), progress=False)
    with pytest.raises(ModalityDataError, match=r"modality 'label' \(guidance target\): values must lie in \[0, 9\]"):
        generate(model, n=2, guidance=GuidanceConfig("label", 12, 1.0), progress=False)
    with pytest.raises(ConfigError, match="scale must be a finite number >= 0"):
        GuidanceConfig("label", 1, -1.0)


# -- argument errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, message", [
    (dict(), ConfigError, r"n \(the number of samples\) is required"),
    (dict(n=0), ConfigError, r"n must be a positive integer, got 0"),
    (dict(n=2, sampler="ddin"), ConfigError, r"unknown sampler 'ddin' \(did you mean 'ddim'\?\); known samplers"),
    (dict(n=2, sampler="ddpm", eta=0.5), ConfigError, r"sampler 'ddpm' has no option 'eta'; its options: \['variance'\]"),
    (dict(n=2, sampler="ddim", variance="beta"), ConfigError,
     r"sampler 'ddim' has no option 'variance'; its options: \['eta'\]"),
    (dict(n=2, sampler="heun", eta=1.0), ConfigError, r"sampler 'heun' has no option 'eta'; its options: \[\]"),
    (dict(n=2, sampler="ddpm", variance="sigma"), ConfigError, r"variance must be one of \('beta', 'beta_tilde'\)"),
    (dict(n=2, eta=1.5), ConfigError, r"eta must lie in \[0, 1\]"),
    (dict(n=2, steps=0), ConfigError, r"steps must be a positive integer, got 0"),
    (dict(n=2, nfe=2.5), ConfigError, r"nfe must be a positive integer, got 2.5"),
    (dict(n=2, steps=3, nfe=3), ConfigError, r"give steps or nfe, not both"),
    (dict(n=2, sampler="heun", nfe=2), ConfigError,
     r"sampler 'heun' needs at least 2 steps \(NFE >= 4; the committed draw at z_K included: .*\); nfe = 2 gives"),
    (dict(n=2, sampler="dpmpp_2m", steps=1), ConfigError, r"sampler 'dpmpp_2m' needs at least 2 steps"),
    (dict(n=2, spacing="trailing"), ConfigError, r"spacing = 'trailing': respacing: spacing must be one of"),
    (dict(n=2, clip="soft"), ConfigError, r"clip must be one of \['none', 'static', 'dynamic'\], got 'soft'"),
    (dict(n=2, clip_eps="derive"), ConfigError, r"clip_eps must be one of \['rederive', 'keep'\]"),
    (dict(n=2, clip="dynamic", clip_percentile=1.5), ConfigError, r"clip_percentile must lie in \(0, 1\]"),
    (dict(n=2, sampler_options={"order": 3}), ConfigError,
     r"sampler 'dpmpp_2m_sde' has no option 'order'; its options: \['lower_order_final', 'eta'\]"),
    (dict(n=2, steps=101), ConfigError, r"steps = 101"),
    (dict(given={"labels": torch.tensor([1])}), ConfigError, r"unknown modality 'labels' \(did you mean 'label'\?\)"),
    (dict(n=3, given={"label": torch.tensor([1, 2])}), ConfigError, r"n = 3 but the given data has 2 examples"),
    (dict(given={"label": torch.tensor([1.0])}), ModalityDataError, r"modality 'label'.*expected dtype int64"),
    (dict(given={"image": torch.zeros(1, 1, 8, 8)}, read_t=0.0), ConfigError, r"read_t must be a fraction of T in \(0, 1\]"),
    (dict(given={"image": torch.zeros(2, 1, 8, 8), "label": torch.tensor([1])}), ModalityDataError, r"same batch size"),
    (dict(n=2, device="meta"), ConfigError, r"the model is on cpu, not meta"),
])
def test_argument_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        generate(tiny_model(), progress=False, **kwargs)


def test_everything_given_returns_the_inputs():
    model = tiny_model()
    given_ = {"image": torch.zeros(2, 1, 8, 8), "label": torch.tensor([3, 4])}
    out = generate(model, given=given_, progress=False)
    assert out.samples["image"] is given_["image"] and out.samples["label"] is given_["label"] and out.predictions == {}


def test_a_task_set_without_a_base_generates_its_aggregated_modalities():
    config = {"modalities": [{"kind": "label", "num_classes": 4, "hidden": 8}], "latent_shape": [1, 8, 8],
              "diffusion": {"kind": "cosine", "T": 20}}
    torch.manual_seed(0)
    model = MultiTaskModel(TaskSet.from_config(config, saved=True), "unet", UNET)
    out = generate(model, n=3, steps=5, progress=False)
    assert out.mode == "joint" and list(out.samples) == ["label"]
    assert out.samples["label"].dtype == torch.int64 and out.samples["label"].max() <= 3


def test_progress_bar_is_shown_on_request(capsys):
    generate(tiny_model(), n=1, steps=3, progress=True, sampler="ddim")
    assert "ddim" in capsys.readouterr().err
    generate(tiny_model(), n=1, steps=3, progress=False)
    assert capsys.readouterr().err == ""


# -- the base estimate of a step -----------------------------------------------------------------------------
def _estimates(clip: str, eps: str = "rederive", k: int = 9):
    model = tiny_model()
    model.eval()
    fp = model.forward_process.respace(respaced_timesteps(T, 10))
    z = 3 * torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    den = ModelDenoiser(model, fp, {}, estimate=BaseEstimate(clip, eps), base=base_range(model))
    return model, fp, z, den(z, k)


@pytest.mark.parametrize("clip", ["none", "static", "dynamic"])
def test_the_base_estimate_keeps_the_decomposition_exact_and_zero_auxiliary_channels(clip):
    for rule in ("rederive", "keep"):
        model, fp, z, pred = _estimates(clip, rule)
        k, ab = 9, float(fp.abar[9])
        assert not pred.z0[:, 1:].any()  # z_0 has no content in the auxiliary channel, whatever the rule
        start = z if pred.z_t is None else pred.z_t
        recomposed = ab**0.5 * pred.z0 + fp.injected(pred.enc, k, z) + (1 - ab) ** 0.5 * pred.eps
        assert torch.allclose(recomposed, start, atol=1e-5)
        assert (pred.z_t is None) == (rule == "rederive")  # keep: the state moves, its noise stays the network's
    if clip != "none":
        assert pred.z0.min() >= -1 and pred.z0.max() <= 1


def test_static_clipping_clips_the_network_estimate_and_keep_leaves_its_noise():
    model, fp, z, raw = _estimates("none")
    _, _, _, clipped = _estimates("static")
    _, _, _, kept = _estimates("static", "keep")
    assert raw.z0[:, :1].abs().max() > 1.5  # the unclipped estimate leaves the data range at this t
    assert torch.equal(clipped.z0, raw.z0.clamp(-1, 1)) and torch.equal(kept.z0, clipped.z0)
    t = fp.timesteps[9].expand(4)
    assert torch.equal(kept.eps, model(z, t).eps) and not torch.equal(clipped.eps, kept.eps)
    # keep moves the state by exactly the clipped-away part of the estimate; the DDIM step from it is diffusers'
    z0_hat = fp.z0_from_eps(z, kept.eps, kept.enc, 9)
    z0_hat[:, 1:] = 0  # the auxiliary channel's estimate, which both rules set to zero, is compared apart
    ab = float(fp.abar[9])
    torch.testing.assert_close(kept.z_t[:, :1], z[:, :1] - ab**0.5 * (z0_hat - kept.z0)[:, :1])
    step = ddim_step(fp, kept.z_t, 9, kept.z0, kept.eps, kept.enc).z_prev
    want = float(fp.abar[8]) ** 0.5 * kept.z0 + fp.injected(kept.enc, 8, z) + (1 - float(fp.abar[8])) ** 0.5 * kept.eps
    torch.testing.assert_close(step, want)


def test_dynamic_thresholding_rescales_by_the_percentile_and_leaves_estimates_in_range_alone():
    _, _, _, raw = _estimates("none")
    _, _, _, dyn = _estimates("dynamic")
    u = raw.z0[:, :1].flatten(1)
    s = torch.quantile(u.abs(), 0.995, dim=1).clamp_min(1.0)
    want = torch.maximum(torch.minimum(u, s[:, None]), -s[:, None]) / s[:, None]
    torch.testing.assert_close(dyn.z0[:, :1].flatten(1), want)
    est = BaseEstimate("dynamic")
    inside = torch.rand(2, 1, 4, 4) * 1.6 - 0.8
    fp = tiny_model().forward_process
    z0, _, state = est.apply(fp, inside, 5, inside, torch.zeros_like(inside), {"label": torch.zeros_like(inside)},
                             BaseRange(channels=1, low=-1.0, high=1.0, name="image"))
    assert torch.equal(z0, inside) and torch.equal(state, inside)


def test_clipping_needs_a_base_with_a_data_range():
    config = {"modalities": [{"kind": "label", "num_classes": 4, "hidden": 8}], "latent_shape": [1, 8, 8],
              "diffusion": {"kind": "cosine", "T": 20}}
    model = MultiTaskModel(TaskSet.from_config(config, saved=True), "unet", UNET)
    with pytest.raises(ConfigError, match=r"clip = 'static' needs a base modality; this task set has none"):
        generate(model, n=2, steps=3, clip="static", progress=False)
    with pytest.raises(ConfigError, match=r"needs the base modality 'x' to define a data range"):
        BaseEstimate("dynamic").check(BaseRange(channels=1, low=None, high=1.0, name="x"))


# -- conditioning and guidance use consistent encodings ------------------------------------------------------
def test_exact_conditioning_is_injection_plus_the_heads_own_guidance_at_scale_1():
    model = tiny_model()
    model.eval()
    fp = model.forward_process.respace(respaced_timesteps(T, 10))
    z = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(6))
    y = torch.tensor([1, 5, 9])
    observed = model.encode_some({"label": y}, ["label"])[1]
    k = 6
    inject = ModelDenoiser(model, fp, observed, conditioning="inject")(z, k)
    exact = ModelDenoiser(model, fp, observed, conditioning="exact", observed_data={"label": y})(z, k)
    guided, _ = guided_eps(model, z, fp.timesteps[k].expand(3), float(fp.abar[k]), [(model.taskset["label"], y, 1.0)])
    assert torch.equal(exact.enc["label"], observed["label"]) and torch.equal(inject.enc["label"], observed["label"])
    z0 = fp.z0_from_eps(z, guided, observed, k)
    z0[:, 1:] = 0
    torch.testing.assert_close(exact.z0, z0)
    assert not torch.allclose(exact.z0, inject.z0)


def test_guided_generation_steps_with_the_targets_encoding():
    model = tiny_model()
    model.eval()
    fp = model.forward_process.respace(respaced_timesteps(T, 10))
    z = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(7))
    y = torch.tensor([2, 2, 2])
    target = model.encode_some({"label": y}, ["label"])[1]
    term = [(model.taskset["label"], y, 3.0)]
    pred = ModelDenoiser(model, fp, {}, guidance=term, targets=target)(z, 6)
    assert torch.equal(pred.enc["label"], target["label"])
    off = ModelDenoiser(model, fp, {}, guidance=[(model.taskset["label"], y, 0.0)])(z, 6)
    assert not torch.equal(off.enc["label"], target["label"])  # scale 0: the head's own encoding, unguided


# -- samplers from plugins -----------------------------------------------------------------------------------
def test_a_plugin_sampler_is_found_by_name_and_gets_its_options(mtd_registry_builtin):
    calls = []

    def euler_twice(denoise, z, fp, *, generator=None, callback=None, progress=False, repeat: int = 1):
        calls.append(repeat)
        return sample_ddim(denoise, z, fp, generator=generator, callback=callback, progress=progress)

    class Plugin:
        @hookimpl
        def mtd_register_samplers(self):
            return {"euler_twice": euler_twice, "spec": Sampler(euler_twice, evals_per_step=2, min_steps=3)}

    mtd_registry_builtin.register(Plugin(), name="my-samplers")
    assert {"ddim", "ddpm", "heun", "dpmpp_2m", "euler_twice", "spec"} <= set(mtd_registry_builtin.sampler_names())
    model = tiny_model()
    out = generate(model, n=2, sampler="euler_twice", steps=3, progress=False, sampler_options={"repeat": 4},
                   registry=mtd_registry_builtin)
    assert calls == [4] and out.nfe == 3 + 1  # and the committed label's draw
    assert generate(model, n=2, sampler="spec", nfe=7, progress=False, registry=mtd_registry_builtin,
                    joint="flow").nfe == 7
    with pytest.raises(ConfigError, match=r"sampler 'spec' needs at least 3 steps \(NFE >= 6; the committed draw"):
        generate(model, n=2, sampler="spec", steps=2, progress=False, registry=mtd_registry_builtin)


# -- joint generation: committing a label first ---------------------------------------------------------------
def test_commit_draws_the_label_from_its_head_at_z_K_then_generates_the_image_given_it():
    model = oracle(wrong_head=True)  # the head is certain of y + 1: the committed label must be y + 1
    steps = []
    out = generate(model, n=4, steps=5, sampler="ddim", spacing="uniform", generator=torch.Generator().manual_seed(0),
                   progress=False, callback=steps.append)
    assert torch.equal(out.samples["label"], model.head_y) and out.nfe == 6
    assert [t[0].item() for t in model.seen_t] == [T] + respaced_timesteps(T, 5).flip(0).tolist()
    committed = model.encode_some({"label": model.head_y}, ["label"])[1]["label"]
    assert all(torch.equal(s.prediction.enc["label"], committed) for s in steps)  # observed from then on
    flow = generate(model, n=4, steps=5, sampler="ddim", spacing="uniform", progress=False, joint="flow")
    assert flow.nfe == 5 and torch.equal(flow.samples["label"], model.head_y)


def test_commit_leaves_guided_and_non_categorical_modalities_to_the_flow_and_refuses_a_temperature():
    model = tiny_model()
    out = generate(model, n=3, steps=3, progress=False, guidance=GuidanceConfig("label", 2, 1.0))
    assert out.nfe == 3  # the guided label is not committed
    with pytest.raises(ConfigError, match=r"encoding_temperature names \['label'\], which joint = 'commit' draws"):
        generate(model, n=3, steps=3, progress=False, encoding_temperature={"label": 0.5})
    with pytest.raises(ConfigError, match=r"joint must be one of \['commit', 'flow'\], got 'both'"):
        generate(model, n=3, steps=3, progress=False, joint="both")
    a = generate(model, n=3, steps=3, progress=False, generator=torch.Generator().manual_seed(4))
    b = generate(model, n=3, steps=3, progress=False, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.samples["label"], b.samples["label"]) and torch.equal(a.samples["image"], b.samples["image"])


# -- the budget: every network evaluation counts ----------------------------------------------------------------
SINGLE = {"modalities": [{"kind": "image", "role": "base", "size": 8}], "diffusion": {"kind": "linear", "T": T}}
TOLD = {**CONFIG, "known_input": True, "known_dropout": 0.1}  # classifier-free guidance applies to a given label


def counted(model: MultiTaskModel) -> list[int]:
    """A list that grows at every real evaluation of ``model``'s network (a call of its backbone's forward)."""
    calls: list[int] = []
    model.backbone.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("config", [CONFIG, SINGLE], ids=["image+label", "single-task"])
def test_the_default_budget_is_every_network_evaluation_the_committed_draw_included(config):
    model = tiny_model(config=config)
    calls = counted(model)
    steps = []
    out = generate(model, n=2, progress=False, callback=steps.append, generator=torch.Generator().manual_seed(0))
    assert len(calls) == out.nfe == DEFAULT_STEPS
    assert len(steps) == DEFAULT_STEPS - ("label" in model.taskset.modalities)  # the label's draw at z_K is one


@pytest.mark.parametrize("sampler, nfe, spent, steps", [
    ("dpmpp_2m_sde", 10, 10, 9), ("ddim", 10, 10, 9),
    ("heun", 10, 10, 5),  # 1 + (2 * 5 - 1)
    ("heun", 11, 10, 5),  # 10 left for the sampler: 6 steps would take 11 + 1
])
def test_a_joint_budget_spends_at_most_nfe_and_reports_what_it_spent(sampler, nfe, spent, steps):
    model = tiny_model()
    calls = counted(model)
    seen = []
    out = generate(model, n=2, nfe=nfe, sampler=sampler, progress=False, callback=seen.append)
    assert len(calls) == out.nfe == spent <= nfe and len(seen) == steps
    flow = generate(model, n=2, nfe=nfe, sampler=sampler, progress=False, joint="flow")
    assert flow.nfe <= nfe and flow.nfe == len(calls) - spent  # no draw: the sampler gets the whole budget


def test_a_budget_below_the_samplers_minimum_counts_the_committed_draw():
    model = tiny_model()
    with pytest.raises(ConfigError, match=r"sampler 'dpmpp_2m' needs at least 2 steps \(NFE >= 3; the committed "
                                          r"draw at z_K included: joint='flow' draws none\); nfe = 2 gives 1 step"):
        generate(model, n=2, nfe=2, sampler="dpmpp_2m", progress=False)
    with pytest.raises(ConfigError, match=r"sampler 'ddim' needs at least 1 steps \(NFE >= 2; .*nfe = 1 gives 0"):
        generate(model, n=2, nfe=1, sampler="ddim", progress=False)
    assert generate(model, n=2, nfe=2, sampler="dpmpp_2m", progress=False, joint="flow").nfe == 2
    assert generate(model, n=2, nfe=2, sampler="ddim", progress=False).nfe == 2  # one draw, one step


def test_classifier_free_guidance_counts_both_passes_as_real_evaluations():
    model = tiny_model(config=TOLD)
    calls = counted(model)
    y = torch.tensor([1, 7])
    out = generate(model, given={"label": y}, progress=False)
    assert out.cfg_scale == DEFAULT_CFG_SCALE and len(calls) == out.nfe == DEFAULT_STEPS  # 10 steps, told + untold
    calls.clear()
    out = generate(model, given={"label": y}, nfe=7, sampler="ddim", progress=False)
    assert len(calls) == out.nfe == 6


def test_the_default_cfg_scale_is_the_largest_the_given_kinds_declare():
    import attrs

    from mtd_core.diffusion.noise import NoiseSchedule
    from mtd_plugins.image import ImageModality
    from mtd_plugins.label import LabelModality

    class Sharper(LabelModality):
        design = attrs.evolve(LabelModality.design, cfg_scale=2.0)

    def run(label: type[LabelModality], given: bool) -> float:
        torch.manual_seed(0)
        ts = TaskSet([ImageModality(role="base", size=8), label(num_classes=10, hidden=16)], NoiseSchedule.linear(T),
                     aux_channels=1, known_input=True, known_dropout=0.1)
        kw = dict(given={"label": torch.tensor([2, 5])}) if given else dict(n=2)
        return generate(MultiTaskModel(ts, "unet", UNET), **kw, steps=2, progress=False).cfg_scale

    assert run(Sharper, True) == 2.0
    assert run(LabelModality, True) == DEFAULT_CFG_SCALE == LabelModality.design.cfg_scale
    assert run(Sharper, False) == 1.0  # joint: nothing given to guide towards


def test_every_builtin_sampler_has_the_shared_signature(mtd_registry_builtin):
    """SamplerFn is Callable[..., SamplerOutput] to a type checker; the shared part of the signature is checked here."""
    import inspect

    for name in mtd_registry_builtin.sampler_names():
        params = inspect.signature(mtd_registry_builtin.sampler(name).fn).parameters
        positional = [p.name for p in params.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        assert positional == ["denoise", "z", "fp"], name
        for keyword in ("generator", "callback", "progress"):
            assert params[keyword].kind is inspect.Parameter.KEYWORD_ONLY, (name, keyword)


def test_sampling_options_as_one_typed_object_or_by_keyword():
    from mtd_core.sampling import SamplingOptions

    model = tiny_model()
    by_object = generate(model, n=2, options=SamplingOptions(sampler="ddim", steps=3), progress=False,
                         generator=torch.Generator().manual_seed(0))
    by_keyword = generate(model, n=2, sampler="ddim", steps=3, progress=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(by_object.samples["image"], by_keyword.samples["image"]) and by_object.nfe == by_keyword.nfe
    with pytest.raises(ConfigError, match=r"unknown option 'smapler' \(did you mean 'sampler'\?\)"):
        generate(model, n=2, smapler="ddim")
    with pytest.raises(ConfigError, match="not both"):
        generate(model, n=2, options=SamplingOptions(), steps=3)
