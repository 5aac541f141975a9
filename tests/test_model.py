"""MultiTaskModel: encoders/heads from the modalities, encode, forward, loss, config round trip, errors."""

from __future__ import annotations

import json

import pytest
import torch

from mtd_core.backbones import build_unet
from mtd_core.types import DenoiserOutput
from mtd_core.diffusion.loss import training_loss
from mtd_core.diffusion.noise import NoiseSchedule
from mtd_core.errors import ConfigError, ModalityDataError
from mtd_core.model import MultiTaskModel
from mtd_core.taskset import TaskSet

UNET = dict(channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[4], groups=8, num_heads=2)
CONFIG = {"modalities": [{"kind": "image", "role": "base", "size": 8}, {"kind": "label", "num_classes": 10, "hidden": 32}],
          "diffusion": {"kind": "linear", "T": 100}, "aux_channels": 1,  # the label in a channel of its own
          "known_input": False}  # the paper's eps_theta(z_t, t): tests/test_known_input.py tests the told network


def make_model(config=CONFIG, saved=False, **unet) -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel(TaskSet.from_config(config, saved=saved), "unet", {**UNET, **unet})


def batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, "label": torch.randint(0, 10, (n,), generator=g)}


def test_builds_one_encoder_per_modality_and_one_head_per_aggregated_modality():
    model = make_model()
    assert list(model.encoders) == ["image", "label"] and list(model.heads) == ["label"]
    assert model.feature_spec == model.backbone.feature_spec
    assert model.device == torch.device("cpu")


def test_encode_places_the_base_and_the_encodings_in_their_own_channels():
    model = make_model()
    b = batch()
    model.eval()
    z0, enc = model.encode(b)
    assert z0.shape == (4, 2, 8, 8) and enc["label"].shape == (4, 2, 8, 8)
    assert torch.equal(z0[:, :1], b["image"]) and not z0[:, 1:].any()  # identity encoder of the base, zero beside
    assert not enc["label"][:, :1].any()  # the label lives in the auxiliary channel only
    raw = model.encoders["label"].table()[b["label"]]
    assert torch.allclose(enc["label"][:, 1:], raw / model.scales["label"].rms)


def test_shared_design_adds_the_encodings_on_the_base_channels():
    model = make_model({**CONFIG, "aux_channels": 0})  # the default
    z0, enc = model.eval().encode(batch())
    assert z0.shape == enc["label"].shape == (4, 1, 8, 8) and torch.equal(z0, batch()["image"])


def test_training_scales_the_encodings_by_the_batch_rms_and_tracks_it():
    model = make_model()
    b = batch(n=32)
    raw = model.encoders["label"].table()[b["label"]]
    before = float(model.scales["label"].rms)
    model.train()
    enc = model.encode(b)[1]["label"][:, 1:]
    assert float(enc.detach().pow(2).mean()) == pytest.approx(1.0, rel=1e-5)  # unit RMS over the batch
    r = float(raw.detach().pow(2).mean().sqrt())
    assert float(model.scales["label"].rms) == pytest.approx(before + 0.02 * (r - before), rel=1e-5)
    model.eval()  # sampling divides by the running RMS: a constant, so expectations stay expectations
    assert torch.allclose(model.encode(b)[1]["label"][:, 1:], raw / model.scales["label"].rms)


def test_spread_scaling_centres_the_encodings_and_keeps_what_tells_examples_apart():
    """encoding_scale = "spread": in training each element's batch mean is subtracted and the rest divided by its
    RMS, so an encoder mapping every example to nearly one vector still writes unit-RMS differences into z_t
    ("rms" divides that vector by its norm: the differences stay tiny); sampling uses the running affine map."""
    spread, rms = make_model({**CONFIG, "encoding_scale": "spread"}), make_model()
    assert list(rms.scales["label"].state_dict()) == ["rms"]  # old checkpoints load: no new buffer by default
    assert spread.scales["label"].mean.shape == (1, 8, 8)
    b = batch(n=32)
    for model in (spread, rms):  # a collapsed encoder: one shared vector plus 1e-2 of per-class signal
        with torch.no_grad():
            table = model.encoders["label"].embed.weight
            table.copy_(5.0 + 1e-2 * torch.randn_like(table))
    spread.train(), rms.train()
    enc = spread.encode(b)[1]["label"][:, 1:]
    assert enc.detach().mean(0).abs().max() < 1e-3  # centred per element (up to float32 rounding of 5 + 1e-2)
    assert float((enc.detach() - enc.detach().mean(0)).pow(2).mean()) == pytest.approx(1.0, rel=1e-4)
    collapsed = rms.encode(b)[1]["label"][:, 1:].detach()
    assert float((collapsed - collapsed.mean(0)).pow(2).mean().sqrt()) < 1e-2
    raw = spread.encoders["label"].table()[b["label"]].detach()
    assert torch.allclose(spread.scales["label"].mean, 0.02 * raw.mean(0), atol=1e-6)  # lerp from zeros
    enc.pow(2).sum().backward()  # differentiable through the batch's statistics
    assert spread.encoders["label"].embed.weight.grad.abs().sum() > 0
    spread.eval()  # sampling: (e - running mean) / running spread, affine, so expectations stay expectations
    scale = spread.scales["label"]
    assert torch.allclose(spread.encode(b)[1]["label"][:, 1:], (raw - scale.mean) / scale.rms, atol=1e-6)
    uniform = spread.predicted_encodings({"label": torch.zeros(1, 10)})["label"][:, 1:]
    every = spread.encode_some({"label": torch.arange(10)}, ["label"])[1]["label"][:, 1:]
    assert torch.allclose(uniform[0], every.mean(0), atol=1e-5)


def test_forward_returns_eps_and_every_head_prediction():
    model = make_model()
    z, t = torch.randn(3, 2, 8, 8), torch.tensor([1, 50, 100])
    out = model(z, t)
    assert isinstance(out, DenoiserOutput)
    assert out.eps.shape == z.shape and list(out.preds) == ["label"] and out.preds["label"].shape == (3, 10)


def test_heads_imply_the_auxiliary_noise_and_keep_the_backbone_out_of_it():
    """aux_eps = "heads": the base's channels are the backbone's, the auxiliary ones (z_aux - lambda_t E_hat) /
    sqrt(1 - abar_t); the true encoding gives back the true noise; the backbone's own auxiliary output gets no
    gradient, and with head_grad = 0 the backbone learns from the base's noise alone."""
    net, heads = make_model({**CONFIG, "aux_eps": "network"}, saved=True), make_model()  # "network": retired
    heads.load_state_dict(net.state_dict())
    z, t = torch.randn(3, 2, 8, 8), torch.tensor([1, 50, 100])
    a, b = net(z, t), heads(z, t)
    assert torch.equal(a.eps[:, :1], b.eps[:, :1]) and not torch.allclose(a.eps[:, 1:], b.eps[:, 1:])
    fp = heads.forward_process
    lam, abar = (fp.lam[0, t].float().reshape(-1, 1, 1, 1), fp.abar[t].float().reshape(-1, 1, 1, 1))
    e_hat = heads.predicted_encodings(b.preds)["label"][:, 1:]
    assert torch.allclose(b.eps[:, 1:], (z[:, 1:] - lam * e_hat) / (1 - abar).sqrt(), atol=1e-5)
    heads.eval()
    z0, enc = heads.encode(batch(n=3))
    eps = torch.randn(3, 2, 8, 8)
    exact = fp.eps_from_z0(fp.q_sample(z0, enc, t, eps), torch.zeros_like(z0), enc, t)
    assert torch.allclose(exact[:, 1:], eps[:, 1:], atol=1e-5)  # what the heads imply when they are right
    heads.train()
    heads.zero_grad()
    heads.loss(batch(), generator=torch.Generator().manual_seed(0)).loss.backward()
    out_conv = [p for p in heads.backbone.parameters() if p.ndim == 4 and p.shape[0] == 2][-1]  # eps's 2 channels
    assert out_conv.grad is not None and out_conv.grad[:1].abs().sum() > 0 and not out_conv.grad[1:].any()
    frozen = make_model({**CONFIG, "aux_eps": "heads", "modalities": [CONFIG["modalities"][0],
                                                                       {**CONFIG["modalities"][1], "head_grad": 0.0}]})
    b, t, eps = batch(), torch.tensor([10, 40, 70, 90]), torch.randn(4, 2, 8, 8)
    grads = []
    for whole in (True, False):  # the whole loss, then the base's noise error alone: the same backbone gradient
        frozen.zero_grad()
        if whole:
            frozen.loss(b, t=t, eps=eps).loss.backward()
        else:
            z0, enc = frozen.encode(b)
            out = frozen(frozen.forward_process.q_sample(z0, enc, t, eps), t)
            ((out.eps[:, :1] - eps[:, :1]).pow(2).flatten(1).sum(1) / 64).mean().backward()
        grads.append([p.grad.clone() for p in frozen.backbone.parameters()])
    assert all(torch.allclose(g, h, atol=1e-6) for g, h in zip(*grads))


def test_predicted_encodings_of_a_certain_prediction_equal_the_true_encoding():
    model = make_model().eval()
    y = torch.tensor([3, 7])
    logits = 1e4 * torch.nn.functional.one_hot(y, 10).float()
    enc = model.predicted_encodings({"label": logits})["label"]
    assert torch.equal(enc, model.encode_some({"label": y}, ["label"])[1]["label"])


def test_an_unsure_prediction_gives_the_expected_encoding_not_a_renormalised_one():
    model = make_model().eval()
    enc = model.predicted_encodings({"label": torch.zeros(1, 10)})["label"]  # uniform over the 10 classes
    table = model.encode_some({"label": torch.arange(10)}, ["label"])[1]["label"]
    assert torch.allclose(enc[0], table.mean(0), atol=1e-6)
    assert float(enc.detach().pow(2).mean()) < 0.5 * float(table.detach().pow(2).mean())  # the mean of ten encodings is small


@pytest.mark.parametrize("bad, message", [
    ({"label": torch.tensor([1.0, 2.0, 3.0, 4.0])}, r"modality 'label'.*expected dtype int64, got float32"),
    ({"label": torch.tensor([1, 2, 3, 10])}, r"modality 'label'.*values must lie in \[0, 9\]"),
    ({"image": torch.zeros(4, 1, 7, 7)}, r"modality 'image'.*expected a batch of shape \(B, 1, 8, 8\), got \(4, 1, 7, 7\)"),
    ({"label": torch.tensor([1, 2])}, r"same batch size, got \{'image': 4, 'label': 2\}"),
])
def test_encode_validates_each_modality_and_names_it(bad, message):
    model = make_model()
    with pytest.raises(ModalityDataError, match=message):
        model.encode({**batch(), **bad})


def test_a_missing_modality_is_named():
    with pytest.raises(ModalityDataError, match=r"missing modalities \['label'\]"):
        make_model().encode({"image": batch()["image"]})


def test_loss_is_training_loss_and_trains_every_part():
    model = make_model()
    b = batch()
    t, eps = torch.tensor([1, 10, 50, 100]), torch.randn(4, 1, 8, 8)
    out = model.loss(b, t=t, eps=eps)
    twin = make_model()  # the same weights and encoding scale's running statistics, which a training loss updates
    ref = training_loss(twin.forward_process, twin, twin.taskset.modalities, b, twin.encode, t=t, eps=eps)
    assert torch.equal(out.loss, ref.loss) and set(out.terms) == {"eps", "label"}
    out.loss.backward()
    # the output conv starts at zero, so only parameters upstream of eps and the label path get gradients at step 0
    assert model.backbone.out_conv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads["label"].parameters())
    assert model.encoders["label"].embed.weight.grad.abs().sum() > 0
    assert torch.isfinite(model.loss(b, kind="vlb", generator=torch.Generator().manual_seed(0)).loss)


def with_head_grad(value: object) -> dict:
    """CONFIG with the label's ``head_grad`` set to ``value``."""
    return {**CONFIG, "modalities": [CONFIG["modalities"][0], {**CONFIG["modalities"][1], "head_grad": value}]}


def _backbone_grads(head_grad: float) -> tuple[DenoiserOutput, list[torch.Tensor], list[torch.Tensor]]:
    """The head's loss gradient on the backbone's parameters, and on the head's, for a label with ``head_grad``."""
    model = make_model(with_head_grad(head_grad))
    out = model(torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 10, 50, 100]))
    torch.nn.functional.cross_entropy(out.preds["label"], batch()["label"]).backward()
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.backbone.parameters()]
    return out, grads, [p.grad.clone() for p in model.heads["label"].parameters()]


def test_head_grad_scales_the_heads_gradient_into_the_backbone_and_nothing_else():
    full, g1, h1 = _backbone_grads(1.0)
    assert sum(float(g.abs().sum()) for g in g1) > 0  # the paper's training: the head shapes the backbone
    for share in (0.0, 0.25):
        out, g, h = _backbone_grads(share)
        assert torch.equal(out.preds["label"], full.preds["label"]) and torch.equal(out.eps, full.eps)
        assert all(torch.allclose(a, share * b, atol=1e-7) for a, b in zip(g, g1))
        assert all(torch.allclose(a, b) for a, b in zip(h, h1))  # the head itself learns as before


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0"])
def test_head_grad_outside_zero_one_is_a_clear_error(bad):
    with pytest.raises(ConfigError, match=r"modality 'label': head_grad must be a number in \[0, 1\]"):
        TaskSet.from_config(with_head_grad(bad))


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), True, "1"])
def test_a_negative_or_non_numeric_loss_weight_is_a_clear_error(bad):
    with pytest.raises(ConfigError, match=r"modality 'label': loss_weight must be a finite number >= 0"):
        TaskSet.from_config({**CONFIG, "modalities": [CONFIG["modalities"][0],
                                                       {**CONFIG["modalities"][1], "loss_weight": bad}]})


def test_head_grad_is_always_saved():
    assert TaskSet.from_config(CONFIG).to_config()["modalities"][1]["head_grad"] == 0.1  # the label kind's
    ts = TaskSet.from_config(with_head_grad(0.5))
    again = TaskSet.from_config(json.loads(json.dumps(ts.to_config())))
    assert again["label"].head_grad == 0.5 and again.to_config() == ts.to_config()


def test_a_fixed_encoder_stays_at_its_initialisation_while_the_rest_trains():
    """train_encoder = false: E_i gets no gradient and no update (weight decay included), is saved, and a non-boolean
    is a clear error."""
    fixed_cfg = {**CONFIG, "modalities": [CONFIG["modalities"][0], {**CONFIG["modalities"][1], "train_encoder": False}]}
    model = make_model(fixed_cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for i in range(3):
        opt.zero_grad()
        model.loss(batch(8, seed=i), generator=torch.Generator().manual_seed(i)).loss.backward()
        opt.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoders.label."))
    assert not torch.equal(before["heads.label.0.weight"], after["heads.label.0.weight"])  # the head learns
    assert TaskSet.from_config(fixed_cfg).to_config()["modalities"][1]["train_encoder"] is False
    assert TaskSet.from_config(CONFIG).to_config()["modalities"][1]["train_encoder"] is True
    with pytest.raises(ConfigError, match=r"modality 'label': train_encoder must be true or false, got 'no'"):
        TaskSet.from_config({**CONFIG, "modalities": [CONFIG["modalities"][0],
                                                       {**CONFIG["modalities"][1], "train_encoder": "no"}]})


def test_loss_is_seeded_by_its_generator():
    # fresh models: a training loss updates the encoding scale's running statistics, which the heads' implied
    # noise reads
    a = make_model().loss(batch(), generator=torch.Generator().manual_seed(5)).loss
    b = make_model().loss(batch(), generator=torch.Generator().manual_seed(5)).loss
    c = make_model().loss(batch(), generator=torch.Generator().manual_seed(6)).loss
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_few_steps_of_training_lower_the_loss():
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    b = batch(32)
    fixed = dict(t=torch.randint(1, 101, (32,), generator=torch.Generator().manual_seed(1)),
                 eps=torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(2)))
    before = model.loss(b, **fixed).loss.item()
    for _ in range(15):
        opt.zero_grad()
        model.loss(b, **fixed).loss.backward()
        opt.step()
    assert model.loss(b, **fixed).loss.item() < 0.8 * before


def test_without_a_base_z0_is_zero():
    config = {"modalities": [{"kind": "label", "num_classes": 4, "hidden": 8}], "latent_shape": [1, 8, 8],
              "diffusion": {"kind": "cosine", "T": 20}}
    model = make_model(config)
    z0, enc = model.encode({"label": torch.tensor([0, 3])})
    assert torch.equal(z0, torch.zeros(2, 1, 8, 8)) and enc["label"].shape == (2, 1, 8, 8)
    assert torch.isfinite(model.loss({"label": torch.tensor([0, 3])}).loss)


def test_config_round_trips_through_json_and_reproduces_the_network():
    model = make_model()
    config = json.loads(json.dumps(model.config()))
    assert config["backbone"] == "unet" and config["backbone_options"]["channel_mult"] == [1, 2]
    clone = MultiTaskModel.from_config(config)
    clone.load_state_dict(model.state_dict())
    z, t = torch.randn(2, 2, 8, 8), torch.tensor([3, 90])
    a, b = model(z, t), clone(z, t)
    assert torch.equal(a.eps, b.eps) and torch.equal(a.preds["label"], b.preds["label"])
    assert clone.config() == model.config()


def test_config_errors():
    with pytest.raises(ConfigError, match=r"unknown key 'backbone_option' \(did you mean 'backbone_options'\?\)"):
        MultiTaskModel.from_config({"taskset": CONFIG, "backbone_option": {}})
    with pytest.raises(ConfigError, match="missing key 'taskset'"):
        MultiTaskModel.from_config({"backbone": "unet"})
    with pytest.raises(ConfigError, match=r"unknown backbone 'unte' \(did you mean 'unet'\?\)"):
        MultiTaskModel(TaskSet.from_config(CONFIG), "unte")
    with pytest.raises(ConfigError, match=r"unknown option 'chanels'"):
        MultiTaskModel(TaskSet.from_config(CONFIG), "unet", {"chanels": 8})


def test_a_ready_backbone_module_is_used_as_is_but_has_no_config():
    ts = TaskSet.from_config(CONFIG)
    net = build_unet(ts.latent, **UNET)
    model = MultiTaskModel(ts, net)
    assert model.backbone is net
    with pytest.raises(ConfigError, match="given as a module, which has no config"):
        model.config()
    with pytest.raises(ConfigError, match="backbone_options apply to a backbone name"):
        MultiTaskModel(ts, net, {"channels": 8})


def test_bf16_autocast_loss_on_cpu():
    model = make_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.loss(batch(), generator=torch.Generator().manual_seed(0))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()


def test_custom_noise_schedule_is_used():
    config = {**CONFIG, "diffusion": {"kind": "cosine", "T": 30}}
    model = make_model(config)
    assert model.forward_process.noise == NoiseSchedule.cosine(30)
    with pytest.raises(ValueError, match=r"t must lie in 0..30"):
        model.loss(batch(), t=torch.tensor([1, 2, 3, 31]))
