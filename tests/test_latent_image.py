"""The latent image modality (mtd_plugins/latent_image.py): a frozen diffusers AutoencoderKL read from a folder as the
base. Every test uses a tiny randomly initialised AutoencoderKL saved to a temporary folder (8x8 grey images, a
factor-2 latent of 4 channels), so the file runs in seconds and downloads nothing."""

from __future__ import annotations

import atexit
import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import AutoencoderKL

from mtd_core.errors import ConfigError, MTDError
from mtd_core.modality import BasePrediction, LatentSpec
from mtd_core.model import MultiTaskModel
from mtd_core.plugins.conformance import ModalityConformance
from mtd_core.plugins.registry import get_registry
from mtd_core.sampling import generate
from mtd_core.taskset import TaskSet
from mtd_core.training import RunConfig, Trainer, build_run, load_run
from mtd_core.training.config import resolve_config
from mtd_plugins.latent_image import LatentImageModality


def make_vae(folder: Path, seed: int = 0, channels: int = 1, blocks: tuple[int, ...] = (8, 16),
             **config: Any) -> Path:
    """A tiny random AutoencoderKL saved to ``folder`` (down-sampling factor 2 ** (len(blocks) - 1))."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=channels, out_channels=channels, down_block_types=("DownEncoderBlock2D",) * len(blocks),
                        up_block_types=("UpDecoderBlock2D",) * len(blocks), block_out_channels=blocks,
                        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=8,
                        mid_block_add_attention=False, **config)
    vae.save_pretrained(str(folder))
    return folder


VAE = make_vae(Path(tempfile.mkdtemp(prefix="mtd-tiny-vae-")) / "vae")
atexit.register(shutil.rmtree, VAE.parent, True)
OPTIONS = {"vae": str(VAE), "size": 8}


class TestLatentImageConformance(ModalityConformance):
    modality_class = LatentImageModality
    options = OPTIONS


def base(**options: Any) -> dict[str, Any]:
    return {"kind": "latent_image", "name": "image", "role": "base", **OPTIONS, **options}


def latent(**options: Any) -> LatentImageModality:
    m = LatentImageModality.from_config(base(**options))
    assert isinstance(m, LatentImageModality)
    return m


def run_config(vae: Path = VAE, steps: int = 3) -> RunConfig:
    return RunConfig.from_dict({
        "dataset": {"name": "digits"},
        "taskset": {"modalities": [base(vae=str(vae)), {"kind": "label", "num_classes": 10, "hidden": 16}],
                    "diffusion": {"kind": "linear", "T": 50}},
        "backbone": {"name": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "groups": 4},
        "trainer": {"steps": steps, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "checkpoint_every": 0,
                    "log_every": 1, "sample_n": 0, "progress": False, "device": "cpu", "ema_decay": 0.9}})


def test_encode_and_decode_shapes_and_the_scaling_of_z0(tmp_path: Path) -> None:
    folder = make_vae(tmp_path / "scaled", scaling_factor=2.0, shift_factor=0.5)
    m = latent(vae=str(folder))
    assert m.latent_shape() == (4, 4, 4) and m.data_spec().shape == (1, 8, 8)
    codec = m.build_encoder(LatentSpec(m.latent_shape()))
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    z = m.encode(codec, x)
    raw = AutoencoderKL.from_pretrained(str(folder)).encode(x).latent_dist.mean
    assert z.shape == (3, 4, 4, 4) and z.dtype == torch.float32
    torch.testing.assert_close(z, 2.0 * (raw - 0.5))
    out = codec.decode(z)
    assert out.shape == (3, 1, 8, 8) and out.min() >= -1 and out.max() <= 1
    m.validate(m.sample(BasePrediction(mean=z, log_var=torch.full_like(z, -4.0)), greedy=True))


def test_the_autoencoder_is_frozen_and_not_in_the_model_weights() -> None:
    ts = TaskSet.from_config({"modalities": [base(), {"kind": "label", "num_classes": 10}],
                              "diffusion": {"kind": "linear", "T": 50}})
    model = MultiTaskModel(ts, "unet", {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "groups": 4})
    assert ts.latent.shape[1:] == (4, 4)
    z0, _ = model.encode({"image": torch.zeros(2, 1, 8, 8), "label": torch.zeros(2, dtype=torch.long)})
    assert model.base_part(z0).shape == (2, 4, 4, 4)
    vae = ts["image"].autoencoder.module(torch.device("cpu"))
    model.train()
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    names = [k for k in model.state_dict() if k.startswith("encoders.image")]
    assert names == [] and not any(p is q for p in model.parameters() for q in vae.parameters())
    twin = copy.deepcopy(model)  # an EMA copy or a deepcopy shares the autoencoder
    assert twin.encoders["image"].autoencoder is model.encoders["image"].autoencoder
    assert torch.isfinite(model.loss({"image": torch.rand(2, 1, 8, 8) * 2 - 1,
                                      "label": torch.tensor([1, 2])}, kind="vlb").loss)


def test_an_image_label_model_trains_samples_and_loads_from_its_checkpoint(tmp_path: Path) -> None:
    vae = Path(shutil.copytree(VAE, tmp_path / "vae"))
    cfg = run_config(vae)
    run = build_run(cfg)
    res = Trainer(run.model, run.data, cfg.trainer, tmp_path / "run", run_config=run.config.to_dict()).fit()
    assert res.step == 3
    out = generate(run.model, 4, given={"label": torch.tensor([0, 1, 2, 3])}, steps=3, progress=False,
                   generator=torch.Generator().manual_seed(0))
    assert out.samples["image"].shape == (4, 1, 8, 8) and out.samples["image"].abs().max() <= 1
    joint = generate(run.model, 2, steps=3, progress=False)
    assert joint.samples["image"].shape == (2, 1, 8, 8) and joint.samples["label"].shape == (2,)
    loaded = load_run(tmp_path / "run")
    saved = json.loads((max((tmp_path / "run" / "checkpoints").iterdir()) / "config.json").read_text())
    mod = saved["model"]["taskset"]["modalities"][0]
    assert mod["vae"] == str(vae) and len(mod["fingerprint"]) == 64
    assert loaded.model.taskset["image"].latent_shape() == (4, 4, 4)
    with pytest.raises(ConfigError, match="inpaint keeps known values"):
        generate(loaded.model, inpaint=(torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8, dtype=torch.bool)),
                 steps=2, progress=False)
    make_vae(vae, seed=1)  # another autoencoder in the same folder
    with pytest.raises(ConfigError) as e:
        load_run(tmp_path / "run")
    assert str(vae) in str(e.value) and "fingerprint" in str(e.value) and "\n" not in str(e.value)


def test_the_config_records_the_folder_absolute_and_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(VAE.parent)
    resolved = resolve_config(run_config(Path("vae")), get_registry())
    mod = resolved.to_dict()["taskset"]["modalities"][0]
    assert mod["vae"] == str(VAE) and mod["posterior"] == "mean" and mod["latent_shape"] is None
    again = resolve_config(RunConfig.from_dict(resolved.to_dict()), get_registry())
    assert again.to_dict() == resolved.to_dict()
    m = latent(posterior="sample", latent_shape=[4, 4, 4])
    assert LatentImageModality.from_config(json.loads(json.dumps(m.to_config()))) == m


@pytest.mark.parametrize("options, words", [
    ({"vae": None}, ["option 'vae' is required"]),
    ({"vae": "/nonexistent/vae"}, ["/nonexistent/vae", "no such folder"]),
    ({"channels": 3}, ["(1, S, S)", "(3, 8, 8)", str(VAE)]),
    ({"size": 7}, ["down-samples by 2", "(1, 7, 7)", "(4, 3.5, 3.5)", str(VAE)]),
    ({"latent_shape": [4, 8, 8]}, ["(4, 4, 4)", "(4, 8, 8)", str(VAE)]),
    ({"fingerprint": "0" * 64}, ["000000000000", str(VAE), "fingerprint"]),
    ({"posterior": "median"}, ["posterior", "median"]),
    ({"latent_shape": [4, 4]}, ["latent_shape"]),
])
def test_bad_options_fail_in_one_line_naming_what_is_wrong(options: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        latent(**options)
    message = str(e.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_a_folder_that_does_not_load_names_the_folder_and_the_reason(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(ConfigError, match=r"unet: does not load as an AutoencoderKL: config.json names class 'UNet2DModel'"):
        latent(vae=str(tmp_path / "unet"))
    broken = Path(shutil.copytree(VAE, tmp_path / "broken"))
    (broken / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    m = latent(vae=str(broken))  # config.json reads; the weights load when first used
    with pytest.raises(ConfigError) as e:
        m.encode(m.build_encoder(LatentSpec(m.latent_shape())), torch.zeros(1, 1, 8, 8))
    assert f"{broken} does not load as an AutoencoderKL" in str(e.value) and "\n" not in str(e.value)
    (broken / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no weights file"):
        latent(vae=str(broken))


def test_a_missing_diffusers_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs diffusers, which is not installed: pip install \"mtd\[bench\]\""):
        latent()


def test_a_deeper_autoencoder_changes_the_latent(tmp_path: Path) -> None:
    folder = make_vae(tmp_path / "f4", blocks=(8, 8, 16))
    assert latent(vae=str(folder)).latent_shape() == (4, 2, 2)
    with pytest.raises(MTDError, match="down-samples by 4"):
        latent(vae=str(folder), size=10)
