"""ModalityConformance: the tests every modality plugin should pass, as a pytest base class.

Usage, in a plugin's test module::

    from mtd_core.plugins.conformance import ModalityConformance
    from my_plugin import BrightnessModality

    class TestBrightness(ModalityConformance):
        modality_class = BrightnessModality
        options = {"scale": 2.0}                  # optional Config fields / constructor keywords

        def derive_batch(self, modality, n, generator):   # only when the modality implements derive()
            return {"image": torch.rand(n, 1, 8, 8, generator=generator) * 2 - 1}

The class is not collected by itself (its name does not start with ``Test``); a subclass inherits every
``test_*`` method. pytest and hypothesis are imported inside the tests, so importing this module needs neither.
"""

from __future__ import annotations

import json
import math
from typing import ClassVar

import torch
from torch import nn

from mtd_core.errors import ModalityDataError
from mtd_core.modality import BasePrediction, FeatureSpec, HeadInput, LatentSpec, Modality, Role
from mtd_core.outputs import check_encoding, checked_loss
from mtd_core.plugins.validate import validate_modality
from mtd_core.types import Batch, ConfigMapping, Prediction

FLOAT32 = frozenset({torch.float32})


class _Built:
    """A modality in one role with its encoder and head, and a twin rebuilt from its JSON config and assets."""

    def __init__(self, m: Modality, latent: LatentSpec, features: FeatureSpec) -> None:
        self.m, self.features = m, features
        self.latent = LatentSpec(m.latent_shape()) if m.role is Role.BASE else latent  # type: ignore[arg-type]
        self.encoder = m.build_encoder(self.latent)
        self.head = m.build_head(self.latent, features)
        self.twin = type(m).from_config(json.loads(json.dumps(m.to_config())))
        self.twin.load_assets(m.assets())
        self.twin_encoder = self.twin.build_encoder(self.latent)
        self.twin_encoder.load_state_dict(self.encoder.state_dict())
        self.twin_head = self.twin.build_head(self.latent, features)
        if self.head is not None and self.twin_head is not None:
            self.twin_head.load_state_dict(self.head.state_dict())

    def predict(self, head: nn.Module | None, n: int, generator: torch.Generator) -> Prediction:
        """The head's prediction from random features of the kind it reads (a random BasePrediction for a base)."""
        _, H, W = self.latent.shape
        if head is None:
            mean = torch.randn((n, *self.latent.shape), generator=generator)
            return BasePrediction(mean=mean, log_var=torch.full_like(mean, math.log(1e-3)))
        if self.m.head_input is HeadInput.POOLED:
            return head(torch.randn(n, self.features.pooled_dim, generator=generator))
        return head(torch.randn(n, self.features.map_channels, H, W, generator=generator))


class ModalityConformance:
    """A pytest base class of conformance tests for a Modality subclass.

    Class attributes to set in a subclass:
        modality_class: the Modality subclass under test (required).
        options: constructor keywords (Config fields, ``name``, ``weights``; a ``role`` key limits the tests to
            that role, else every supported role is tested).
        latent: the latent space for aggregated roles (the base uses its own ``latent_shape()``).
        features: the backbone features fed to heads (as random tensors).

    Override :meth:`derive_batch` when the modality implements ``derive``: it returns the other modalities'
    data that ``derive`` reads (e.g. the base image), so the derived data can be checked against ``validate``.
    """

    modality_class: ClassVar[type[Modality]]
    options: ClassVar[ConfigMapping] = {}
    latent: ClassVar[LatentSpec] = LatentSpec((1, 8, 8))
    features: ClassVar[FeatureSpec] = FeatureSpec(pooled_dim=32, map_channels=16)

    # -- helpers a subclass may use or override ---------------------------------------------------------
    def derive_batch(self, modality: Modality, n: int, generator: torch.Generator) -> Batch | None:
        """The inputs ``modality.derive`` reads, for ``n`` examples; None when the modality derives nothing."""
        return None

    def roles(self) -> list[Role]:
        """The roles under test: ``options['role']`` if given, else every role of the class."""
        if "role" in self.options:
            return [Role(self.options["role"])]
        return list(self.modality_class.roles)

    def make(self, role: Role) -> Modality:
        """The modality under test in ``role``, fitted on an example batch when it needs fitting."""
        opts = {k: v for k, v in self.options.items() if k != "role"}
        m = self.modality_class(role=role, **opts)
        gen = torch.Generator().manual_seed(0)
        m.fit([m.example_batch(4, gen)])
        return m

    def build(self, role: Role) -> _Built:
        """The modality in ``role`` with its networks and a twin rebuilt from its config (seeded init)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return _Built(self.make(role), self.latent, self.features)

    def valid_data(self, m: Modality, n: int = 3, seed: int = 0) -> torch.Tensor:
        """A valid batch of ``n`` examples of ``m``'s data."""
        return m.example_batch(n, torch.Generator().manual_seed(seed))[m.name]

    def assert_rejected(self, m: Modality, x: object, what: str) -> None:
        """``m.validate(x)`` must raise a ModalityDataError whose message names the modality."""
        import pytest

        with pytest.raises(ModalityDataError) as info:
            m.validate(x)
        assert repr(m.name) in str(info.value) or m.name in str(info.value), (
            f"{what}: the ModalityDataError does not name the modality {m.name!r}: {info.value}"
        )

    # -- inherited tests -----------------------------------------------------------------------------------
    def test_validate_modality_passes(self) -> None:
        """validate_modality finds no problem in any role."""
        opts = dict(self.options)
        report = validate_modality(self.modality_class, opts, latent=self.latent, features=self.features)
        assert report.ok, str(report)

    def test_loss_finite_and_config_round_trip(self) -> None:
        """For random batch sizes and seeds: finite (B,) losses, valid samples, and a modality rebuilt from its JSON
        config and assets (with the same weights) gives identical encodings and losses."""
        from hypothesis import given
        from hypothesis import strategies as st

        for role in self.roles():
            b = self.build(role)

            @given(n=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
            def check(n: int, seed: int) -> None:
                x = self.valid_data(b.m, n, seed)
                b.m.validate(x)
                z = check_encoding(b.m, b.m.encode(b.encoder, x), n, b.latent.shape, FLOAT32)
                assert torch.isfinite(z).all(), f"role {role.value}: non-finite encoding of valid data"
                assert torch.equal(b.twin.encode(b.twin_encoder, x), z)
                pred = b.predict(b.head, n, torch.Generator().manual_seed(seed))
                loss = checked_loss(b.m, pred, x)  # a (n,) floating tensor, or an error saying what came back
                assert torch.isfinite(loss).all(), f"role {role.value}: non-finite loss {loss.tolist()}"
                pred2 = b.predict(b.twin_head, n, torch.Generator().manual_seed(seed))
                assert torch.equal(b.twin.loss(pred2, x), loss)
                b.m.validate(b.m.sample(pred, greedy=False, generator=torch.Generator().manual_seed(seed)))
                assert b.twin.to_config() == b.m.to_config()

            check()

    def test_rejects_wrong_shape(self) -> None:
        """Data with an extra dimension, or without the batch dimension, is rejected naming the modality."""
        for role in self.roles():
            m = self.make(role)
            x = self.valid_data(m)
            self.assert_rejected(m, x.unsqueeze(-1), "extra dimension")
            self.assert_rejected(m, x[0], "missing batch dimension")

    def test_rejects_wrong_dtype(self) -> None:
        """Data of another dtype (float64 for float data, float32 for integer data) is rejected."""
        for role in self.roles():
            m = self.make(role)
            x = self.valid_data(m)
            wrong = x.to(torch.float64) if x.dtype != torch.float64 else x.to(torch.float32)
            self.assert_rejected(m, wrong, f"dtype {wrong.dtype}")

    def test_rejects_nan_and_out_of_range(self) -> None:
        """NaN in float data, and values outside the data spec's [low, high], are rejected."""
        for role in self.roles():
            m = self.make(role)
            spec = m.data_spec()
            x = self.valid_data(m)
            if x.is_floating_point():
                bad = x.clone()
                bad.view(-1)[0] = float("nan")
                self.assert_rejected(m, bad, "NaN")
            step = 0.5 if x.is_floating_point() else 1
            if spec.high is not None:
                bad = x.clone()
                bad.view(-1)[-1] = spec.high + step
                self.assert_rejected(m, bad, f"value above high={spec.high}")
            if spec.low is not None:
                bad = x.clone()
                bad.view(-1)[0] = spec.low - step
                self.assert_rejected(m, bad, f"value below low={spec.low}")

    def test_derive_produces_valid_data(self) -> None:
        """derive (when it derives anything) gives data that validates, repeatably for the same generator seed."""
        import pytest

        for role in self.roles():
            m = self.make(role)
            if type(m).derive is not Modality.derive and type(self).derive_batch is ModalityConformance.derive_batch:
                pytest.fail(f"{self.modality_class.__name__} overrides derive() but {type(self).__name__} does not "
                            "override derive_batch(): return the data derive() reads (e.g. the base image), so "
                            "that what it derives is tested")
            inputs = self.derive_batch(m, 3, torch.Generator().manual_seed(0)) or {}
            try:
                out = m.derive(dict(inputs), torch.Generator().manual_seed(1))
            except ModalityDataError as e:
                if not inputs:
                    pytest.fail(f"{self.modality_class.__name__}.derive() needs inputs ({e}): override derive_batch() "
                                f"in {type(self).__name__} to return the data derive() reads")
                raise
            if out is None:
                pytest.skip(f"{self.modality_class.__name__} derives nothing here (derive returned None given "
                            f"{sorted(inputs)})")
            m.validate(out)
            if inputs:
                n = len(next(iter(inputs.values())))
                assert len(out) == n, f"derive gave {len(out)} examples from inputs of {n}"
            again = m.derive(dict(inputs), torch.Generator().manual_seed(1))
            assert again is not None and torch.equal(out, again), "derive is not repeatable for the same generator seed"

    def test_derive_without_inputs(self) -> None:
        """derive on a batch missing its inputs returns None or raises a ModalityDataError naming the modality."""
        for role in self.roles():
            m = self.make(role)
            try:
                out = m.derive({}, torch.Generator().manual_seed(0))
            except ModalityDataError as e:
                assert m.name in str(e), f"the error does not name the modality {m.name!r}: {e}"
                continue
            assert out is None, f"derive({{}}) returned {type(out).__name__}; expected None or a ModalityDataError"


__all__ = ["ModalityConformance"]
