"""Gradient clipping by scope (TrainConfig ``grad_clip_scope``): one norm over the model, or each part apart."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from mtd_core.errors import CheckpointError, ConfigError
from mtd_core.model import MultiTaskModel
from mtd_core.training import RunConfig, TrainConfig, Trainer, backward_and_clip, build_run, load_run
from mtd_core.training.resume import check_resumable

from tests.test_trainer import TINY


def _model(**label: Any) -> MultiTaskModel:
    cfg = copy.deepcopy(TINY)
    cfg["taskset"]["modalities"][1].update(label)
    return build_run(RunConfig.from_dict(cfg)).model


def _loss(model: MultiTaskModel, backbone: float, label: float) -> torch.Tensor:
    """A loss whose gradient is ``backbone`` on every backbone weight and ``label`` on the label's encoder and head."""
    parts = model.parts()
    return (backbone * sum(p.sum() for p in parts["backbone"])
            + label * sum(p.sum() for p in parts["label"]))  # type: ignore[return-value]


def _norm(params: list[torch.nn.Parameter]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))  # type: ignore[union-attr]


def test_parts_hold_every_trainable_parameter_once_and_leave_a_frozen_encoder_out() -> None:
    model = _model()
    parts = model.parts()
    assert list(parts) == ["backbone", "label"]
    ids = [id(p) for ps in parts.values() for p in ps]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    frozen = _model(train_encoder=False).parts()["label"]
    assert frozen and all(p.requires_grad for p in frozen)
    assert {id(p) for p in frozen}.isdisjoint(id(p) for p in _model(train_encoder=False).encoders["label"].parameters())


def test_part_scope_keeps_the_backbone_step_when_a_head_gradient_is_large() -> None:
    steps = {}
    for scope in ("model", "part"):
        model = _model()
        opt = torch.optim.AdamW(model.parameters())
        norm = backward_and_clip(model, opt, _loss(model, 1e-3, 10.0), 1e-3, 1.0, scope)
        parts = model.parts()
        n_b, n_l = len(parts["backbone"]), len(parts["label"])
        raw_b = 1e-3 * sum(p.numel() for p in parts["backbone"]) ** 0.5
        raw_l = 10.0 * sum(p.numel() for p in parts["label"]) ** 0.5
        assert n_b and n_l
        assert float(norm) == pytest.approx((raw_b ** 2 + raw_l ** 2) ** 0.5, rel=1e-5)  # before clipping, either way
        steps[scope] = (_norm(parts["backbone"]), _norm(parts["label"]), raw_b)
    b, lab, raw_b = steps["model"]
    assert (b ** 2 + lab ** 2) ** 0.5 == pytest.approx(1.0, rel=1e-5)
    assert b < raw_b / 100  # one norm: the head's gradient shrank the backbone's step
    b, lab, raw_b = steps["part"]
    assert b == pytest.approx(raw_b, rel=1e-5) and lab == pytest.approx(1.0, rel=1e-5)


def test_the_model_scope_is_torch_s_global_clip_and_zero_disables_clipping() -> None:
    a, b = _model(), _model()
    b.load_state_dict(a.state_dict())
    backward_and_clip(a, torch.optim.AdamW(a.parameters()), _loss(a, 0.5, 2.0), 1e-3, 1.0)
    _loss(b, 0.5, 2.0).backward()
    torch.nn.utils.clip_grad_norm_(list(b.parameters()), 1.0)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p.grad, q.grad)  # type: ignore[arg-type]
    c = _model()
    backward_and_clip(c, torch.optim.AdamW(c.parameters()), _loss(c, 0.5, 2.0), 1e-3, 0.0, "part")
    assert all(torch.all(p.grad == 2.0) for p in c.parts()["label"])  # type: ignore[union-attr]


def test_a_bad_scope_is_a_config_error_naming_the_key_and_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"trainer.grad_clip_scope must be one of \['model', 'part'\], got 'parts'"):
        TrainConfig(grad_clip_scope="parts")


def test_a_part_scoped_run_trains_and_a_checkpoint_from_before_the_option_resumes(tmp_path: Path) -> None:
    cfg = copy.deepcopy(TINY)
    cfg["trainer"].update(steps=2, checkpoint_every=0, grad_clip_scope="part")
    config = RunConfig.from_dict(cfg)
    run = build_run(config)
    assert Trainer(run.model, run.data, config.trainer, tmp_path, run_config=run.config.to_dict()).fit().step == 2
    assert load_run(tmp_path).run_config.trainer.grad_clip_scope == "part"  # type: ignore[union-attr]

    model_config = run.model.config()
    older = {k: v for k, v in TrainConfig().to_dict().items() if k != "grad_clip_scope"}  # written before the option
    ckpt = SimpleNamespace(path=tmp_path / "old.safetensors", config={"model": model_config, "run": {"trainer": older}})
    check_resumable(ckpt, model_config, TrainConfig(), {})  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=r"trainer options \['grad_clip_scope'\] differ"):
        check_resumable(ckpt, model_config, TrainConfig(grad_clip_scope="part"), {})  # type: ignore[arg-type]
