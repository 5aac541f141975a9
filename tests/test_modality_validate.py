"""validate_modality and ModalityConformance catch broken plugins with precise messages, and never crash."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import torch
from torch import nn

from mtd_core.errors import ConfigError
from mtd_core.modality import DataSpec, FeatureSpec, HeadInput, LatentSpec, Modality, Role
from mtd_core.plugins.conformance import ModalityConformance
from mtd_core.plugins.validate import ValidationReport, option, positive_int, validate_modality


@attrs.frozen
class ScalarConfig:
    """Options.

    Attributes:
        scale: multiplies the encoding.
    """

    scale: float = 1.0


class Scalar(Modality):
    """A correct toy modality: one float in [0, 1] per example, a linear encoder, a Gaussian head."""

    kind = "scalar"
    roles = (Role.AGGREGATED,)
    head_input = HeadInput.POOLED
    Config = ScalarConfig

    def data_spec(self) -> DataSpec:
        return DataSpec((1,), "float32", 0.0, 1.0)

    def build_encoder(self, latent: LatentSpec) -> nn.Module:
        return nn.Sequential(nn.Linear(1, latent.numel), nn.Unflatten(1, latent.shape))

    def build_head(self, latent: LatentSpec, features: FeatureSpec) -> nn.Module:
        return nn.Linear(features.pooled_dim, 1)

    def loss(self, pred: Any, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((pred - x) ** 2).sum(1)

    def sample(self, pred: Any, *, greedy: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        return pred.detach().clamp(0.0, 1.0)


class WrongEncodingShape(Scalar):
    def build_encoder(self, latent: LatentSpec) -> nn.Module:
        return nn.Linear(1, 3)


class NaNLoss(Scalar):
    def loss(self, pred: Any, x: torch.Tensor) -> torch.Tensor:
        return super().loss(pred, x) * float("nan")


class LossNotPerExample(Scalar):
    def loss(self, pred: Any, x: torch.Tensor) -> torch.Tensor:
        return super().loss(pred, x).sum()


class DetachedHead(Scalar):
    def loss(self, pred: Any, x: torch.Tensor) -> torch.Tensor:
        return super().loss(pred.detach(), x)


class InvalidSamples(Scalar):
    def sample(self, pred: Any, *, greedy: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        return pred.detach() + 5.0


class RaisingHead(Scalar):
    def build_head(self, latent: LatentSpec, features: FeatureSpec) -> nn.Module:
        raise RuntimeError("head exploded")


class LossyConfig(Scalar):
    def to_config(self) -> dict[str, Any]:
        out = super().to_config()
        del out["scale"]  # forgets an option: a modality rebuilt from the config differs
        return out


@attrs.frozen
class SilentConfig:
    """No docs here."""

    mystery: int = 3


class UndocumentedOption(Scalar):
    """A scalar."""

    kind = "undocumented"
    Config = SilentConfig


class WarmTemper(Scalar):
    def temper(self, pred: Any, temperature: float) -> Any:
        return pred + 1.0  # temperature 1 should leave the prediction as it is


class TemperedWithoutTemper(Scalar):
    default_encoding_temperature = 0.5  # but no temper() to apply it with


class Float64Encoder(Scalar):
    def build_encoder(self, latent: LatentSpec) -> nn.Module:
        return super().build_encoder(latent).double()

    def encode(self, encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return encoder(x.double())


class InfiniteAtTheEdge(Scalar):
    """log(1 - x): infinite at x = 1, a value in the data range that the first example batch happens to miss."""

    def example_batch(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        x = torch.rand(batch_size, 1, generator=generator) * 0.5
        return {self.name: x if generator.initial_seed() != 1001 else torch.ones(batch_size, 1)}

    def encode(self, encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return encoder(torch.log1p(-x))


class Abstract(Modality):
    kind = "abstract"


@pytest.mark.parametrize(("cls", "options", "check", "detail"), [
    (WrongEncodingShape, {}, "encode shape", "expected shape (4, 1, 8, 8), got (4, 3)"),
    (NaNLoss, {}, "loss finite", "expected finite values"),
    (LossNotPerExample, {}, "loss shape", "expected shape (4,), got ()"),
    (Float64Encoder, {}, "encode dtype", "expected torch.float32 (the dtype of Z and the backbone), got torch.float64"),
    (InfiniteAtTheEdge, {}, "random batch 2 finite", "expected finite encodings and losses"),
    (DetachedHead, {}, "head gradient", "no gradient at all"),
    (InvalidSamples, {}, "validate(sample(greedy=True))", "values must lie in [0.0, 1.0]"),
    (RaisingHead, {}, "build_head", "raised RuntimeError: head exploded"),
    (LossyConfig, {"scale": 2.0}, "config round-trip", "differences in ['Config']"),
    (UndocumentedOption, {}, "Config documented", "undocumented ['mystery']"),
    (WarmTemper, {}, "temper(pred, 1) leaves predicted_encoding unchanged", "expected the same encoding"),
    (TemperedWithoutTemper, {}, "default_encoding_temperature", "on a kind that overrides temper, got 0.5"),
    (Abstract, {}, "class", "abstract methods ['data_spec', 'loss', 'sample']"),
])
def test_each_bug_is_one_precise_problem(cls: type[Modality], options: dict, check: str, detail: str) -> None:
    report = validate_modality(cls, options)
    assert not report.ok
    matching = [p for p in report.problems if f": {check}: " in p]
    assert len(report.problems) == 1 and matching, report.problems
    assert detail in matching[0] and matching[0].startswith(cls.kind), matching[0]


def test_a_correct_modality_passes_with_its_checks_listed() -> None:
    report = validate_modality(Scalar, {"scale": 2.0}, latent=LatentSpec((2, 4, 4)), batch_size=3)
    assert report.ok and report.problems == []
    assert "scalar (role aggregated): encoder gradient" in report.checks
    assert str(report).startswith("modality 'scalar': ok")


def test_not_a_modality_and_bad_options_are_problems_not_exceptions() -> None:
    assert validate_modality(dict).problems == [  # type: ignore[arg-type]
        "dict: class: expected a subclass of mtd_core.modality.Modality, got <class 'dict'>"]
    report = validate_modality(Scalar, {"scael": 1.0})
    assert not report.ok and "did you mean 'scale'" in report.problems[0]
    assert isinstance(report, ValidationReport)


def test_role_option_limits_the_roles() -> None:
    from mtd_plugins.image import ImageModality

    both = validate_modality(ImageModality)
    base = validate_modality(ImageModality, {"role": "base"})
    assert both.ok and base.ok
    assert any("(role aggregated)" in c for c in both.checks)
    assert not any("(role aggregated)" in c for c in base.checks)


def test_option_validators_give_config_errors() -> None:
    @attrs.frozen
    class OptConfig:
        """Attributes: n, mode."""

        n: int = attrs.field(default=1, validator=positive_int)
        mode: str = attrs.field(default="a", validator=option("'a' or 'b'", lambda v: v in ("a", "b")))

    class WithOptions(Scalar):
        kind = "with_options"
        Config = OptConfig

    with pytest.raises(ConfigError, match="'n' must be an integer >= 1, got True"):
        WithOptions(n=True)
    with pytest.raises(ConfigError, match="'mode' must be 'a' or 'b', got 'c'"):
        WithOptions(mode="c")


class _Kit(ModalityConformance):
    """Not collected (no Test prefix): instantiated by hand to show the kit catches bugs."""


def test_conformance_kit_catches_a_modality_that_accepts_bad_data() -> None:
    class NoRangeCheck(Scalar):
        def data_spec(self) -> DataSpec:
            return DataSpec((1,), "float32", 0.0, 1.0)

        def validate(self, x: Any, *, where: str = "") -> None:
            if x.ndim != 2:
                super().validate(x, where=where)

    kit = type("Kit", (_Kit,), {"modality_class": NoRangeCheck})()
    kit.test_rejects_wrong_shape()  # still rejected
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        kit.test_rejects_nan_and_out_of_range()


def test_conformance_kit_asks_for_derive_inputs() -> None:
    class Derived(Scalar):
        def derive(self, batch: Any, generator: torch.Generator | None = None) -> torch.Tensor:
            from mtd_core.errors import ModalityDataError

            if "image" not in batch:
                raise ModalityDataError(f"modality {self.name!r}: derive needs 'image'")
            return batch["image"].flatten(1).mean(1, keepdim=True).clamp(0, 1)

    kit = type("Kit", (_Kit,), {"modality_class": Derived})()
    with pytest.raises(pytest.fail.Exception, match="override derive_batch"):
        kit.test_derive_produces_valid_data()
    def derive_batch(self: Any, modality: Modality, n: int, generator: torch.Generator) -> dict[str, Any]:
        return {"image": torch.rand(n, 1, 4, 4, generator=generator)}

    kit_ok = type("Kit", (_Kit,), {"modality_class": Derived, "derive_batch": derive_batch})()
    kit_ok.test_derive_produces_valid_data()
    kit_ok.test_derive_without_inputs()
    kit_ok.test_loss_finite_and_config_round_trip()
