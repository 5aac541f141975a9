"""Modality.empirical_prior: a representation (prior = "training", its default) keeps training vectors, saves them
with the run, and joint generation commits to one of them at no network evaluation."""

from __future__ import annotations

import pytest
import torch

from mtd_core.errors import CheckpointError, ModalityDataError
from mtd_core.model import MultiTaskModel
from mtd_core.sampling import generate
from mtd_core.plugins.registry import get_registry
from mtd_core.taskset import TaskSet
from mtd_core.taskset_options import saved_taskset_config
from mtd_plugins.representation import PRIOR_ASSET, PRIOR_SIZE, RepresentationModality

IMAGE = {"kind": "image", "role": "base", "size": 8}
REPR = {"kind": "representation", "dim": 4, "builtin_extractor": "random_conv"}
UNET = {"channels": 8, "channel_mult": [1], "num_res_blocks": 1, "groups": 4, "mid_attention": False}


def batches(n: int, size: int = 16) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(size, 1, 8, 8, generator=g) * 2 - 1} for _ in range(n)]


def fitted_model(*extra: dict[str, object]) -> MultiTaskModel:
    torch.manual_seed(0)
    ts = TaskSet.from_config({"modalities": [IMAGE, REPR, *extra], "diffusion": {"T": 50}})
    ts["representation"].fit(batches(3))
    return MultiTaskModel(ts, "unet", UNET)


def test_fit_keeps_the_extractor_s_training_vectors_and_assets_round_trip() -> None:
    m = RepresentationModality(**{k: v for k, v in REPR.items() if k != "kind"})
    data = batches(3)
    m.fit(data)
    kept = m.empirical_prior()
    assert kept is not None and torch.equal(kept, torch.cat([m.derive(b) for b in data]))
    twin = RepresentationModality(**{k: v for k, v in REPR.items() if k != "kind"})
    twin.load_assets(m.assets())
    assert torch.equal(twin.empirical_prior(), kept) and twin.assets() == m.assets()
    many = RepresentationModality(dim=4, builtin_extractor="random_conv", prior="training")
    many.fit(batches(PRIOR_SIZE // 16 + 2))
    assert len(many.empirical_prior()) == PRIOR_SIZE


def test_prior_none_keeps_nothing_and_an_unfitted_prior_is_an_error_not_a_silent_flow() -> None:
    m = RepresentationModality(dim=4, builtin_extractor="random_conv", prior="none")
    m.fit(batches(2))
    assert m.empirical_prior() is None and m.assets() == {}
    torch.manual_seed(0)
    unfitted = MultiTaskModel(TaskSet.from_config({"modalities": [IMAGE, REPR], "diffusion": {"T": 50}}), "unet", UNET)
    with pytest.raises(ModalityDataError, match=r"'representation' \(representation\): prior = 'training' .* fit\(\) "
                                                "was not called"):
        generate(unfitted, n=2, nfe=2, progress=False)
    given = {"representation": torch.zeros(2, 4)}  # a given vector needs no prior
    assert generate(unfitted, n=2, nfe=2, given=given, progress=False).samples["image"].shape == (2, 1, 8, 8)


def test_a_saved_config_without_prior_reads_as_the_former_default() -> None:
    model = fitted_model()
    config = model.config()
    for m in config["taskset"]["modalities"]:
        m.pop("prior", None)  # written before the option existed
    old = MultiTaskModel.from_config(config, saved=True)
    assert old.taskset["representation"].config.prior == "none"
    assert MultiTaskModel.from_config(config).taskset["representation"].config.prior == "training"
    explicit = saved_taskset_config(config["taskset"], get_registry())  # what --resume compares
    assert [m.get("prior") for m in explicit["modalities"]] == [None, "none"]


def test_joint_generation_commits_to_a_kept_vector_at_no_network_evaluation() -> None:
    model = fitted_model()
    kept = model.taskset["representation"].empirical_prior()
    out = generate(model, n=6, nfe=4, generator=torch.Generator().manual_seed(1), progress=False)
    assert out.nfe == 4  # the sampler's four evaluations; the draw costs none
    r = out.samples["representation"]
    assert all((kept == row).all(1).any() for row in r)  # each row is one of the kept training vectors
    again = generate(model, n=6, nfe=4, generator=torch.Generator().manual_seed(1), progress=False)
    assert torch.equal(again.samples["representation"], r) and torch.equal(again.samples["image"], out.samples["image"])
    flowed = generate(model, n=6, nfe=4, joint="flow", generator=torch.Generator().manual_seed(1), progress=False)
    assert not any((kept == row).all(1).any() for row in flowed.samples["representation"])


def test_a_label_beside_it_still_costs_its_head_draw() -> None:
    model = fitted_model({"kind": "label", "num_classes": 3})
    out = generate(model, n=4, nfe=5, generator=torch.Generator().manual_seed(0), progress=False)
    assert out.nfe == 5 and out.samples["label"].shape == (4,)
    kept = model.taskset["representation"].empirical_prior()
    assert all((kept == row).all(1).any() for row in out.samples["representation"])


def test_saved_assets_rebuild_the_model_with_its_prior() -> None:
    model = fitted_model()
    rebuilt = MultiTaskModel.from_config(model.config(), assets=model.assets())
    assert torch.equal(rebuilt.taskset["representation"].empirical_prior(),
                       model.taskset["representation"].empirical_prior())


def test_bad_assets_and_missing_vectors_are_clear_errors() -> None:
    m = RepresentationModality(dim=4, builtin_extractor="random_conv", prior="training")
    with pytest.raises(CheckpointError, match=r"'representation' \(representation\): the assets lack 'prior"):
        m.load_assets({})
    with pytest.raises(CheckpointError, match=f"{PRIOR_ASSET} does not load"):
        m.load_assets({PRIOR_ASSET: b"not safetensors"})
    other = RepresentationModality(dim=5, builtin_extractor="random_conv", prior="training")
    other.fit(batches(1))
    with pytest.raises(ModalityDataError, match=rf"\({PRIOR_ASSET}\).*shape"):
        m.load_assets(other.assets())
    bare = RepresentationModality(dim=4, prior="training")
    with pytest.raises(ModalityDataError, match="the batches hold none and there is no extractor"):
        bare.fit(batches(1))
    with pytest.raises(ModalityDataError, match="given no training examples"):
        m.fit([])


def test_a_plugin_s_bad_empirical_prior_is_named() -> None:
    model = fitted_model()
    m = model.taskset["representation"]
    m._prior = torch.zeros(0, 4)
    with pytest.raises(ModalityDataError, match=r"'representation' \(representation\): empirical_prior\(\) must "
                                                r"return a non-empty tensor"):
        generate(model, n=2, nfe=2, progress=False)
    m._prior = torch.zeros(3, 7)
    with pytest.raises(ModalityDataError, match=r"empirical_prior\(\).*shape"):
        generate(model, n=2, nfe=2, progress=False)
