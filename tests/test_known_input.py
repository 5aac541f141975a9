"""TaskSet ``known_input``: the backbone also reads the known aggregated part of z_t (config, model, loss, samplers)."""

from __future__ import annotations

import pytest
import torch

from mtd_core.errors import ConfigError
from mtd_core.model import MultiTaskModel
from mtd_core.sampling.denoiser import ModelDenoiser
from mtd_core.sampling.generate import generate
from mtd_core.sampling.options import DEFAULT_CFG_SCALE, DEFAULT_STEPS
from mtd_core.sampling.guidance import GuidanceConfig
from mtd_core.taskset import TaskSet
from mtd_core.types import DenoiserOutput

UNET = dict(channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[4], groups=8, num_heads=2)
CONFIG = {"modalities": [{"kind": "image", "role": "base", "size": 8},
                         {"kind": "label", "num_classes": 10, "hidden": 32,
                          "weights": {"kind": "windowed", "peak": 1.0, "start": 0.05, "center": 0.4, "end": 0.9}}],
          "diffusion": {"kind": "linear", "T": 100}, "known_input": True,
          "aux_channels": 0}  # the label on the base's channels (the paper's shared design); OWN_CHANNELS below
UNTOLD = {**CONFIG, "known_input": False}


def make_model(config=CONFIG) -> MultiTaskModel:
    torch.manual_seed(0)
    model = MultiTaskModel(TaskSet.from_config(config), "unet", UNET)
    with torch.no_grad():  # the U-Net's output layer starts at zero; give it weights so eps depends on its input
        model.backbone.out_conv.weight.normal_(0, 0.1)
    return model.eval()


def batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, "label": torch.randint(0, 10, (n,), generator=g)}


def test_config_round_trips_and_defaults_the_dropout():
    ts = TaskSet.from_config(CONFIG)
    assert ts.known_input and ts.known_dropout == 0.1
    assert ts.to_config()["known_input"] is True and ts.to_config()["known_dropout"] == 0.1
    assert TaskSet.from_config(ts.to_config()) == ts
    off = TaskSet.from_config(UNTOLD)
    assert not off.known_input and off.to_config()["known_input"] is False
    assert TaskSet.from_config({**CONFIG, "known_dropout": 0.0}).known_dropout == 0.0


@pytest.mark.parametrize("extra, message", [
    ({"known_input": "yes"}, "known_input must be true or false"),
    ({"known_dropout": 1.0}, "known_dropout must be a probability in [0, 1)"),
    ({"known_dropout": -0.1}, "known_dropout must be a probability in [0, 1)"),
    ({"known_input": False, "known_dropout": 0.2}, "applies only with known_input = true"),
])
def test_bad_options_are_clear_errors(extra, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        TaskSet.from_config({**CONFIG, **extra})


def test_known_input_needs_an_aggregated_modality():
    with pytest.raises(ConfigError, match="needs at least one aggregated modality"):
        TaskSet.from_config({"modalities": [CONFIG["modalities"][0]], "known_input": True})


def test_the_backbone_reads_z_t_and_the_known_part_and_returns_eps_of_z_t():
    model = make_model()
    assert model.backbone.latent.shape == (2, 8, 8)
    z, t = torch.randn(6, 1, 8, 8), torch.full((6,), 40)
    plain, zeros = model(z, t), model(z, t, torch.zeros_like(z))
    assert plain.eps.shape == z.shape and torch.equal(plain.eps, zeros.eps)  # nothing known = zeros
    known = model(z, t, torch.randn_like(z))
    assert not torch.allclose(known.eps, plain.eps) and not torch.allclose(known.preds["label"], plain.preds["label"])


def test_without_known_input_the_part_is_ignored():
    model = make_model(UNTOLD)
    z, t = torch.randn(6, 1, 8, 8), torch.full((6,), 40)
    assert model.backbone.latent.shape == (1, 8, 8)
    assert torch.equal(model(z, t).eps, model(z, t, torch.randn_like(z)).eps)


class Recorder(torch.nn.Module):
    """Wraps a model and records the known part of every call."""

    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model, self.taskset, self.known = model, model.taskset, []

    def forward(self, z_t, t, known=None) -> DenoiserOutput:
        self.known.append(known)
        return self.model(z_t, t, known)

    def predicted_encodings(self, preds):
        return self.model.predicted_encodings(preds)


def label_step(model: MultiTaskModel):
    """Six given labels, their encodings, the model's process, a state z and a step k inside the label's window."""
    y = torch.tensor([3, 1, 4, 1, 5, 9])
    _, observed = model.encode_some({"label": y}, ["label"])
    return y, observed, model.forward_process, torch.randn(6, 1, 8, 8), 40


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_training_shows_each_examples_true_part_or_hides_it_with_probability_p(p):
    model = make_model({**CONFIG, "known_dropout": p})
    rec = Recorder(model)
    from mtd_core.diffusion.loss import training_loss

    b = batch(n=400)
    t = torch.full((400,), 40)  # inside the window: every example's part is non-zero
    training_loss(model.forward_process, rec, model.modalities, b, model.encode, t=t,
                  generator=torch.Generator().manual_seed(0), known_dropout=p)
    _, enc = model.encode(b)
    full = model.forward_process.injected(enc, t, enc["label"])
    known = rec.known[0]
    shown = torch.tensor([torch.allclose(known[i], full[i]) for i in range(400)])
    hidden = ~known.flatten(1).any(1)
    assert bool((shown | hidden).all())  # each example's part is either the true one or zero
    assert abs(hidden.float().mean().item() - p) < 0.08


def test_samplers_pass_the_observed_part_and_decompose_with_it():
    model = make_model()
    rec = Recorder(model)
    _, observed, fp, z, k = label_step(model)
    pred = ModelDenoiser(rec, fp, observed)(z, k)  # the default conditioning, "replace"
    assert torch.allclose(rec.known[0], fp.injected(observed, k, z))
    # the network saw the true part, so its eps is decomposed with the true encodings and z is not replaced
    eps = model(z, fp.timesteps[k].expand(6), rec.known[0]).eps
    assert torch.allclose(pred.z0, fp.z0_from_eps(z, eps, observed, k)) and pred.z_t is None


def test_joint_generation_conditions_every_step_on_the_committed_label():
    model = make_model()
    calls = []
    original = model.forward

    def spy(z_t, t, known=None):
        calls.append(known)
        return original(z_t, t, known)

    model.forward = spy  # type: ignore[method-assign]
    out = generate(model, 6, generator=torch.Generator().manual_seed(0), progress=False, nfe=5, sampler="ddim")
    assert calls[0] is None  # the label is drawn from the head at z_K, where nothing is known
    with torch.no_grad():
        _, enc = model.encode_some({"label": out.samples["label"]}, ["label"])
    fp = model.forward_process
    t_in_window = [k for k in calls[1:] if k is not None and k.abs().sum() > 0]
    assert len(t_in_window) >= 2  # the steps inside the label's window read its part
    for known in t_in_window:  # each is lambda_t E(y) of the drawn labels, for some t
        ratio = known.flatten(1).norm(dim=1) / enc["label"].flatten(1).norm(dim=1)
        assert torch.allclose(known, ratio[0] * enc["label"], atol=1e-5)
        assert 0 < float(ratio[0]) <= float(fp.lam.max()) + 1e-6


def test_the_bound_tells_the_chain_the_committed_label_and_reads_its_term_at_z_T():
    from mtd_core.diffusion.elbo import MultiModalELBO

    model = make_model()
    rec = Recorder(model)
    fp, ts = model.forward_process, model.taskset
    elbo = MultiModalELBO(fp, ts.modalities, ts.base_latent, model.encode, known=["label"])
    b = batch()
    steps = torch.tensor([10, 40, 80])
    out = elbo(rec, b, timesteps=steps, generator=torch.Generator().manual_seed(0))
    _, enc = model.encode(b)
    # every denoising step and t = 1 read the label's true part; the last call (z_T) is told nothing
    assert len(rec.known) == 5 and rec.known[-1] is None
    assert all(k is not None for k in rec.known[:4])
    assert torch.allclose(rec.known[1], fp.injected(enc, 40, enc["label"]))
    assert torch.allclose(out.bound, out.prior + out.denoise + out.recon + out.decode["label"])
    assert torch.allclose(out.total, out.bound)  # the label's term is counted once
    plain = MultiModalELBO(fp, ts.modalities, ts.base_latent, model.encode)(
        model, b, timesteps=steps, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(plain.bound, plain.prior + plain.denoise + plain.recon)
    assert not torch.allclose(plain.denoise, out.denoise)  # a different chain, a different bound


def test_the_bound_rejects_a_known_name_that_is_not_aggregated():
    from mtd_core.diffusion.elbo import MultiModalELBO
    from mtd_core.errors import ScheduleError

    model = make_model()
    ts = model.taskset
    with pytest.raises(ScheduleError, match=r"known names \['image'\]"):
        MultiModalELBO(model.forward_process, ts.modalities, ts.base_latent, model.encode, known=["image"])


def test_with_two_aggregated_modalities_the_part_of_the_known_one_alone_is_told():
    config = {**CONFIG, "modalities": [*CONFIG["modalities"], {"kind": "representation", "dim": 4, "source": "image",
                                                                "builtin_extractor": "random_conv"}]}
    model = make_model(config)
    rec = Recorder(model)
    _, observed, fp, z, k = label_step(model)
    ModelDenoiser(rec, fp, observed)(z, k)  # the representation is generated: its part is not known
    only_label = fp.injected({"label": observed["label"], "representation": torch.zeros_like(z)}, k, z)
    assert torch.allclose(rec.known[0], only_label) and torch.allclose(fp.known_part(observed, k, z), only_label)
    assert rec.known[0].abs().sum() > 0
    from mtd_core.diffusion.elbo import MultiModalELBO

    b = {**batch(), "representation": model.taskset["representation"].derive(batch())}
    rec.known.clear()
    elbo = MultiModalELBO(fp, model.taskset.modalities, model.taskset.base_latent, model.encode, known=["label"])
    out = elbo(rec, b, timesteps=torch.tensor([40]), generator=torch.Generator().manual_seed(0))
    _, enc = model.encode(b)
    label_alone = fp.injected({"label": enc["label"], "representation": torch.zeros_like(enc["label"])}, 40, z)
    assert torch.allclose(rec.known[0], label_alone) and torch.isfinite(out.bound).all()
    read = generate(model, given={"image": b["image"], "label": b["label"]}, progress=False)  # read-out, told the label
    assert read.mode == "readout" and read.predictions["representation"].shape == (6, 4)


def test_guidance_reads_the_guiding_head_on_the_hidden_path_and_eps_on_the_told_one():
    model = make_model()
    rec = Recorder(model)
    y, observed, fp, z, k = label_step(model)
    scale = 2.0
    told = fp.known_part(observed, k, z)
    pred = ModelDenoiser(rec, fp, observed, guidance=[(model.taskset["label"], y, scale)])(z, k)
    # a told head would read y from its known input: the head is read without it, eps with it
    assert len(rec.known) == 2 and not rec.known[0].any() and torch.allclose(rec.known[1], told)
    t = fp.timesteps[k].expand(6)
    zg = z.clone().requires_grad_(True)
    log_p = -scale * model.taskset["label"].loss(model(zg, t).preds["label"], y).sum()
    grad = torch.autograd.grad(log_p, zg)[0]
    assert grad.abs().sum() > 0
    with torch.no_grad():
        eps = model(z, t, told).eps - float(1 - fp.abar[k]) ** 0.5 * grad
    torch.testing.assert_close(pred.z0, fp.z0_from_eps(z, eps, observed, k))
    # steering a generated label: the network is told the target's part, the head again reads without it
    rec.known.clear()
    ModelDenoiser(rec, fp, {}, guidance=[(model.taskset["label"], y, scale)], targets=observed)(z, k)
    assert not rec.known[0].any() and torch.allclose(rec.known[1], told)


def test_exact_conditioning_of_a_told_model_is_its_told_path():
    model = make_model()
    rec = Recorder(model)
    y, observed, fp, z, k = label_step(model)
    exact = ModelDenoiser(rec, fp, observed, conditioning="exact", observed_data={"label": y})(z, k)
    plain = ModelDenoiser(model, fp, observed)(z, k)
    assert len(rec.known) == 1  # no guidance pass: its eps is already E[eps | z_t, y]
    torch.testing.assert_close(exact.z0, plain.z0)


@pytest.mark.parametrize("w", [0.0, 3.0])
def test_classifier_free_guidance_extrapolates_from_the_untold_eps_to_the_told_one(w):
    model = make_model()
    rec = Recorder(model)
    _, observed, fp, z, k = label_step(model)
    pred = ModelDenoiser(rec, fp, observed, cfg_scale=w)(z, k)
    told = fp.known_part(observed, k, z)
    assert len(rec.known) == 2 and torch.allclose(rec.known[0], told) and rec.known[1] is None  # told, then untold
    t = fp.timesteps[k].expand(6)
    eps_c, eps_u = model(z, t, told).eps, model(z, t).eps
    assert not torch.allclose(eps_c, eps_u)
    torch.testing.assert_close(pred.z0, fp.z0_from_eps(z, eps_u + w * (eps_c - eps_u), observed, k))


def test_classifier_free_guidance_samples_and_counts_both_passes_in_the_budget():
    model = make_model()
    y = torch.tensor([3, 1, 4, 1, 5, 9])
    steps: list[list[int]] = [[], []]
    outs = [generate(model, given={"label": y}, nfe=4, sampler="ddim", cfg_scale=w, progress=False,
                     callback=lambda s, i=i: steps[i].append(s.index), generator=torch.Generator().manual_seed(0))
            for i, w in enumerate((1.0, 2.0))]
    assert (outs[0].nfe, outs[1].nfe) == (4, 4) and (len(steps[0]), len(steps[1])) == (4, 2)  # two passes a step
    assert (outs[0].cfg_scale, outs[1].cfg_scale) == (1.0, 2.0)
    assert not torch.allclose(outs[0].samples["image"], outs[1].samples["image"])
    with pytest.raises(ConfigError, match="NFE >= 2 with classifier-free guidance's two passes a step"):
        generate(model, given={"label": y}, nfe=1, sampler="ddim", cfg_scale=2.0, progress=False)


OWN_CHANNELS = {**CONFIG, "aux_channels": 1}


@pytest.mark.parametrize("config, given, expected", [
    (OWN_CHANNELS, True, DEFAULT_CFG_SCALE),
    (OWN_CHANNELS, False, 1.0),  # joint: nothing to guide towards
    ({**OWN_CHANNELS, "known_dropout": 0.0}, True, 1.0),  # no untold path trained
    (CONFIG, True, 1.0),  # shared channels: the untold path still sees the label in z_t (measured to hurt)
])
def test_classifier_free_guidance_is_the_default_only_where_the_untold_path_hides_the_given_part(config, given,
                                                                                                 expected):
    model = make_model(config)
    y = torch.tensor([3, 1, 4, 1, 5, 9])
    kw = dict(given={"label": y}) if given else dict(n=6)

    def run(**options):
        steps: list[int] = []
        out = generate(model, **kw, sampler="ddim", progress=False, callback=lambda s: steps.append(s.index),
                       generator=torch.Generator().manual_seed(0), **options)
        return out, len(steps)

    default, n_default = run()
    steps = DEFAULT_STEPS // 2 if expected != 1 else DEFAULT_STEPS - (0 if given else 1)  # a joint label's draw: 1
    explicit, n_explicit = run(cfg_scale=expected, steps=steps)
    assert default.cfg_scale == expected and n_default == n_explicit
    assert default.nfe == DEFAULT_STEPS  # every network evaluation counts: the budget stays 20
    torch.testing.assert_close(default.samples["image"], explicit.samples["image"], rtol=0, atol=0)


@pytest.mark.parametrize("config, given, w, message", [
    (CONFIG, {"label": torch.tensor([1, 2])}, -1.0, "cfg_scale must be a finite number >= 0"),
    (CONFIG, {"label": torch.tensor([1, 2])}, float("nan"), "cfg_scale must be a finite number >= 0"),
    (CONFIG, None, 2.0, "this run is joint"),
    ({**CONFIG, "known_dropout": 0.0}, {"label": torch.tensor([1, 2])}, 2.0, "known_dropout = 0.0"),
    (UNTOLD, {"label": torch.tensor([1, 2])}, 2.0, "known_input = false"),
])
def test_classifier_free_guidance_needs_a_told_conditional_run(config, given, w, message):
    with pytest.raises(ConfigError, match=message):
        generate(make_model(config), n=2, given=given, nfe=2, sampler="ddim", cfg_scale=w, progress=False)


class LinearClassifier(torch.nn.Module):
    """A stand-in noise-aware classifier: logits linear in x_t, recording what it reads."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(64, 10)
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x_t, t):
        self.seen.append((x_t.detach().clone(), t))
        return self.lin(x_t.flatten(1)) * (1 + t[:, None] / 100)


def test_an_external_classifier_guides_from_the_base_state_without_the_known_part():
    model = make_model()
    rec, clf = Recorder(model), LinearClassifier()
    y, observed, fp, z, k = label_step(model)
    scale = 2.0
    pred = ModelDenoiser(rec, fp, observed, guidance=[(model.taskset["label"], y, scale)],
                         classifiers={"label": clf})(z, k)
    told = fp.known_part(observed, k, z)
    assert len(rec.known) == 1 and torch.allclose(rec.known[0], told)  # the head is not read: one told pass
    t = fp.timesteps[k].expand(6)
    x_t, seen_t = clf.seen[0]
    assert torch.allclose(x_t, z - told) and torch.equal(seen_t, t)  # the image's state alone
    xg = x_t.clone().requires_grad_(True)
    grad = torch.autograd.grad(-scale * model.taskset["label"].loss(clf(xg, t), y).sum(), xg)[0]
    assert grad.abs().sum() > 0
    with torch.no_grad():
        eps = model(z, t, told).eps - float(1 - fp.abar[k]) ** 0.5 * grad
    torch.testing.assert_close(pred.z0, fp.z0_from_eps(z, eps, observed, k))


def test_classifier_guidance_through_generate():
    model, clf = make_model(), LinearClassifier()
    y = torch.tensor([3, 1, 4, 1, 5, 9])

    def run(scale):
        guidance = GuidanceConfig("label", y, scale, classifier=clf)
        return generate(model, given={"label": y}, guidance=guidance, nfe=3, sampler="ddim", progress=False,
                        generator=torch.Generator().manual_seed(0)).samples["image"]

    plain = generate(model, given={"label": y}, nfe=3, sampler="ddim", progress=False,
                     generator=torch.Generator().manual_seed(0)).samples["image"]
    assert torch.equal(run(0.0), plain) and not torch.allclose(run(50.0), plain)
    with pytest.raises(ConfigError, match="classifier must be None .* got int"):
        GuidanceConfig("label", y, 1.0, classifier=3)
