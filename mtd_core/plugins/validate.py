"""Validating modality plugins: the whole contract (validate_modality) and single Config fields (option validators).

validate_modality builds a modality in every role it supports and exercises its contract on a tiny latent. It is
what `mtd plugins validate` runs, and what a plugin author runs before publishing. Each check that fails becomes
one precise problem string ("<kind> (role <role>): <check>: expected ..., got ..."); a plugin's exception is caught
into a problem, never raised, so one broken plugin cannot stop the validation of the others.

The option validators for a modality's Config (``option(...)``, ``positive_int``, ...) live in
mtd_core/plugins/options.py and are re-exported here, where plugins have always imported them from.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import torch
from torch import nn

from mtd_core.modality import BasePrediction, FeatureSpec, HeadInput, LatentSpec, Modality, Role, is_temperature
from mtd_core.plugins.options import (
    is_bool,
    modality_name,
    non_negative_int,
    one_of,
    option,
    optional_names,
    pixel_value,
    positive_float,
    positive_int,
    unit_interval,
)
from mtd_core.types import BatchValue, ConfigMapping, Prediction

T = TypeVar("T")


# -- validate_modality ---------------------------------------------------------------------------------------
DEFAULT_LATENT = LatentSpec((1, 8, 8))
DEFAULT_FEATURES = FeatureSpec(pooled_dim=32, map_channels=16)


@attrs.frozen
class ValidationReport:
    """The outcome of :func:`validate_modality`.

    Attributes:
        kind: the modality kind validated (the class name when it has no usable ``kind``).
        ok: True when no check failed.
        problems: one line per failed check, naming the kind, role, check, and expected vs received.
        checks: the checks that passed, in order.
    """

    kind: str
    ok: bool
    problems: list[str]
    checks: list[str]

    def __str__(self) -> str:
        head = f"modality {self.kind!r}: " + ("ok" if self.ok else f"{len(self.problems)} problem(s)")
        head += f" ({len(self.checks)} checks passed)"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])


class _Failed(Exception):
    """Raised inside a check to stop the checks that depend on it (already recorded as a problem)."""


class _Checker:
    """Records passed checks and problems for one (kind, role)."""

    def __init__(self, who: str, problems: list[str], checks: list[str]) -> None:
        self.who, self.problems, self.checks = who, problems, checks

    def fail(self, check: str, message: str) -> _Failed:
        self.problems.append(f"{self.who}: {check}: {message}")
        return _Failed(check)

    def run(self, check: str, fn: Callable[[], T]) -> T:
        """``fn()``, or a problem "<check>: raised <Error>: <message>" (and _Failed) when it raises."""
        try:
            out = fn()
        except _Failed:
            raise
        except Exception as e:  # a plugin's bug becomes a problem, never an exception
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise self.fail(check, f"raised {type(e).__name__}: {first}") from None
        return out

    def ok(self, check: str) -> None:
        self.checks.append(f"{self.who}: {check}")

    def expect(self, check: str, cond: bool, expected: str, got: object) -> None:
        """Record ``check`` as passed when ``cond``, else a problem "expected ..., got ..." and _Failed."""
        if not cond:
            raise self.fail(check, f"expected {expected}, got {got}")
        self.ok(check)


def _shape(x: object) -> tuple[int, ...] | str:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _finite(x: object) -> bool:
    return isinstance(x, torch.Tensor) and bool(torch.isfinite(x.detach().float()).all())


def _static_checks(cls: object, c: _Checker) -> None:
    """Class-level contract: a concrete Modality subclass with a kind, roles, head_input and an attrs Config."""
    if not (inspect.isclass(cls) and issubclass(cls, Modality)):
        raise c.fail("class", f"expected a subclass of mtd_core.modality.Modality, got {cls!r}")
    if inspect.isabstract(cls):
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        raise c.fail("class", f"expected a concrete class, got abstract methods {missing} not implemented")
    c.ok("class")
    kind = getattr(cls, "kind", None)
    c.expect("kind", isinstance(kind, str) and kind.isidentifier(), "a class attribute kind: an identifier str",
             repr(kind))
    roles = getattr(cls, "roles", None)
    c.expect("roles", isinstance(roles, tuple) and len(roles) > 0 and all(isinstance(r, Role) for r in roles),
             "a non-empty tuple of Role", repr(roles))
    tau = getattr(cls, "default_encoding_temperature", 1.0)
    c.expect("default_encoding_temperature", tau == 1.0 or (is_temperature(tau) and cls.temper is not Modality.temper),
             "1, or a positive finite number on a kind that overrides temper", repr(tau))
    config = getattr(cls, "Config", None)
    c.expect("Config", inspect.isclass(config) and attrs.has(config), "an attrs class of options", repr(config))
    assert inspect.isclass(config) and attrs.has(config)  # expect() raised otherwise
    docs = (inspect.getdoc(config) or "") + (inspect.getdoc(cls) or "")
    undocumented = [f.name for f in attrs.fields(config) if f.name not in docs]
    c.expect("Config documented", not undocumented, "every Config field named in the Config or class docstring",
             f"undocumented {undocumented}")


def _float32(c: _Checker, check: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    """A network output: a float32 CPU tensor of ``shape`` with finite values (validation runs on the CPU; a float64
    encoder would otherwise pass here and fail in the backbone's first convolution)."""
    c.expect(f"{check} shape", isinstance(t, torch.Tensor) and tuple(t.shape) == shape, f"shape {shape}", _shape(t))
    c.expect(f"{check} dtype", t.dtype == torch.float32, "torch.float32 (the dtype of Z and the backbone)", t.dtype)
    c.expect(f"{check} device", t.device == torch.device("cpu"), "the device of its input (cpu)", t.device)
    c.expect(f"{check} finite", _finite(t), "finite values", "NaN or infinity")


@attrs.define
class _Case:
    """One modality in one role under validation, and what each step of _role_checks has built so far."""

    m: Modality
    latent: LatentSpec
    features: FeatureSpec
    B: int
    gen: torch.Generator
    c: _Checker
    x: BatchValue = None
    encoder: Any = None  # Any: None until _check_networks has checked the nn.Module it sets
    head: Any = None  # Any: None, or the nn.Module _check_networks has checked


def _role_checks(cls: type[Modality], role: Role, options: ConfigMapping, latent: LatentSpec,
                 features: FeatureSpec, batch_size: int, seed: int, c: _Checker) -> None:
    """Build the modality in ``role`` and exercise data, networks, loss, gradients, sampling and round-trips."""
    m = c.run("construct", lambda: cls(**{"role": role, **options}))
    c.ok("construct")
    m2 = _check_config_round_trip(m, c)
    if role is Role.BASE:
        shape = c.run("latent_shape", m.latent_shape)
        good = isinstance(shape, tuple) and len(shape) == 3 and all(isinstance(s, int) and s > 0 for s in shape)
        c.expect("latent_shape", good, "a (C, H, W) tuple of positive ints as the base", repr(shape))
        assert shape is not None  # expect() raised otherwise
        latent = LatentSpec(shape)
    case = _Case(m, latent, features, batch_size, torch.Generator().manual_seed(seed), c)
    _check_data(case)
    _check_networks(case)
    pred, leaf, loss, enc_hat, z = _check_prediction(case)
    _check_gradients(case, loss, z, enc_hat, leaf)
    _check_random_batches(case)
    for greedy in (True, False):
        check = f"sample(greedy={greedy})"
        sample = c.run(check, lambda: m.sample(pred, greedy=greedy, generator=case.gen))
        c.run(f"validate({check})", lambda: m.validate(sample))
        c.ok(check)
    _check_assets(case, m2, z)


def _check_config_round_trip(m: Modality, c: _Checker) -> Modality:
    """to_config is JSON and from_config rebuilds an equal modality; returns the rebuilt twin."""
    config = c.run("to_config", m.to_config)
    text = c.run("to_config is JSON", lambda: json.dumps(config))
    c.ok("to_config is JSON")
    m2 = c.run("from_config", lambda: type(m).from_config(json.loads(text)))
    same = {"to_config": m2.to_config() == config, "Config": getattr(m2, "config", None) == m.config,
            "name": m2.name == m.name, "role": m2.role == m.role, "weights": m2.weights == m.weights,
            "loss_weight": m2.loss_weight == m.loss_weight, "head_grad": m2.head_grad == m.head_grad,
            "train_encoder": m2.train_encoder == m.train_encoder}
    c.expect("config round-trip", all(same.values()), "from_config(to_config()) to rebuild an equal modality",
             f"differences in {[k for k, v in same.items() if not v]}: {m.config} vs {getattr(m2, 'config', None)}")
    return m2


def _check_data(case: _Case) -> None:
    """example_batch (after fit) gives ``{name: B examples}`` that validate() accepts."""
    m, c, B = case.m, case.c, case.B
    batch = c.run("example_batch", lambda: m.example_batch(B, case.gen))
    c.run("fit", lambda: m.fit([batch]))
    batch = c.run("example_batch", lambda: m.example_batch(B, case.gen))
    c.expect("example_batch", isinstance(batch, Mapping) and m.name in batch,
             f"a dict holding the key {m.name!r}",
             sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__)
    case.x = batch[m.name]
    c.run("validate(example_batch)", lambda: m.validate(case.x))
    c.expect("example_batch size", len(case.x) == B, f"{B} examples", len(case.x))
    c.ok("validate(example_batch)")


def _check_networks(case: _Case) -> None:
    """build_encoder / build_head give modules (no head when head_input is NONE)."""
    m, c = case.m, case.c
    case.encoder = c.run("build_encoder", lambda: m.build_encoder(case.latent))
    c.expect("build_encoder", isinstance(case.encoder, nn.Module), "an nn.Module", type(case.encoder).__name__)
    head_input = m.head_input
    c.expect("head_input", isinstance(head_input, HeadInput), "a HeadInput", repr(head_input))
    case.head = c.run("build_head", lambda: m.build_head(case.latent, case.features))
    if head_input is HeadInput.NONE:
        c.expect("build_head", case.head is None, "None (head_input is NONE)", type(case.head).__name__)
    else:
        c.expect("build_head", isinstance(case.head, nn.Module), f"an nn.Module (head_input is {head_input.value})",
                 type(case.head).__name__)


def _predict(case: _Case) -> tuple[Prediction, torch.Tensor | None]:
    """The head's prediction from random backbone features (a random BasePrediction without a head), and the leaf
    tensor the loss gradient is checked on when there is no head."""
    B, gen, (C, H, W) = case.B, case.gen, case.latent.shape
    if case.head is None:
        leaf = torch.randn((B, C, H, W), generator=gen).requires_grad_(True)
        return BasePrediction(mean=leaf, log_var=torch.full_like(leaf, math.log(1e-4))), leaf
    if case.m.head_input is HeadInput.POOLED:
        features = torch.randn(B, case.features.pooled_dim, generator=gen)
    else:
        features = torch.randn(B, case.features.map_channels, H, W, generator=gen)
    return case.c.run("head forward", lambda: case.head(features)), None


def _check_prediction(case: _Case) -> tuple[Prediction, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """encode, the head's prediction, loss and predicted_encoding: shapes, float32 on the input's device, finite."""
    m, c, B, latent = case.m, case.c, case.B, case.latent
    z = c.run("encode", lambda: m.encode(case.encoder, case.x))
    _float32(c, "encode", z, (B, *latent.shape))
    pred, leaf = _predict(case)
    if isinstance(pred, torch.Tensor):
        c.expect("head output dtype", pred.dtype == torch.float32, "torch.float32", pred.dtype)
    loss = c.run("loss", lambda: m.loss(pred, case.x))
    _float32(c, "loss", loss, (B,))
    enc_hat = c.run("predicted_encoding", lambda: m.predicted_encoding(case.encoder, pred))
    _float32(c, "predicted_encoding", enc_hat, (B, *latent.shape))
    if type(m).temper is not Modality.temper:  # a categorical modality: temperature 1 must change nothing
        warm = c.run("temper", lambda: m.predicted_encoding(case.encoder, m.temper(pred, 1.0)))
        c.expect("temper(pred, 1) leaves predicted_encoding unchanged",
                 isinstance(warm, torch.Tensor) and warm.shape == enc_hat.shape
                 and torch.allclose(warm, enc_hat, atol=1e-5), "the same encoding", "a different one")
    return pred, leaf, loss, enc_hat, z


def _check_gradients(case: _Case, loss: torch.Tensor, z: torch.Tensor, enc_hat: torch.Tensor,
                     leaf: torch.Tensor | None) -> None:
    """Gradients reach the trainable parts of encoder and head, finite."""
    c, gen = case.c, case.gen

    def backward() -> None:
        total = loss.sum()
        for t in (z, enc_hat):
            if t.requires_grad:
                total = total + (t * torch.randn(t.shape, generator=gen)).sum()
        if total.requires_grad:
            total.backward()

    c.run("backward", backward)
    for part, module in (("encoder", case.encoder), ("head", case.head)):
        params = [p for p in module.parameters() if p.requires_grad] if module is not None else []
        if not params:
            continue
        grads = [p.grad for p in params if p.grad is not None]
        c.expect(f"{part} gradient", bool(grads), f"a gradient on some {part} parameter", "no gradient at all")
        c.expect(f"{part} gradient finite", all(_finite(g) for g in grads), "finite gradients", "NaN or infinity")
    if leaf is not None:
        c.expect("loss gradient", leaf.grad is not None and _finite(leaf.grad),
                 "a finite gradient w.r.t. the BasePrediction mean", "none or non-finite")


def _check_random_batches(case: _Case, n: int = 3) -> None:
    """``n`` more example batches (other seeds): encoding, prediction and loss stay finite on each."""
    m, c = case.m, case.c
    for i in range(n):
        g = torch.Generator().manual_seed(1000 + i)
        x = c.run("example_batch", lambda: m.example_batch(case.B, g)[m.name])
        with torch.no_grad():
            z = c.run("encode", lambda: m.encode(case.encoder, x))
            pred, _ = _predict(case)
            loss = c.run("loss", lambda: m.loss(pred, x))
        c.expect(f"random batch {i + 1} finite", _finite(z) and _finite(loss), "finite encodings and losses",
                 "NaN or infinity")


def _check_assets(case: _Case, m2: Modality, z: torch.Tensor) -> None:
    """assets() round-trips through load_assets, and the rebuilt twin computes the same encoding."""
    m, c = case.m, case.c
    assets = c.run("assets", m.assets)
    c.expect("assets", isinstance(assets, dict) and all(isinstance(k, str) and isinstance(v, bytes)
                                                         for k, v in assets.items()),
             "a dict of str -> bytes", repr(type(assets)))
    c.run("load_assets", lambda: m2.load_assets(dict(assets)))
    again = c.run("assets round-trip", m2.assets)
    c.expect("assets round-trip", again == assets, "load_assets(assets()) to restore the same assets",
             f"keys {sorted(again)}")

    def rebuilt_encoding() -> torch.Tensor:
        enc2 = m2.build_encoder(case.latent)
        enc2.load_state_dict(case.encoder.state_dict())
        return m2.encode(enc2, case.x)

    z2 = c.run("rebuilt encode", rebuilt_encoding)
    c.expect("rebuilt encode", isinstance(z2, torch.Tensor) and z2.shape == z.shape and torch.equal(z2, z.detach()),
             "the same encoding from the modality rebuilt from its config and assets", "a different encoding")


def validate_modality(cls: type[Modality], options: ConfigMapping | None = None, *,
                      latent: LatentSpec = DEFAULT_LATENT, features: FeatureSpec = DEFAULT_FEATURES,
                      batch_size: int = 4, seed: int = 0) -> ValidationReport:
    """Exercise ``cls``'s contract in each role it supports and report every problem found.

    Args:
        cls: the Modality subclass to validate.
        options: constructor keywords (Config fields, name, weights, ...); a ``role`` key restricts the check to
            that role, else every role in ``cls.roles`` is checked.
        latent: the latent space used for aggregated roles (the base derives its own from ``latent_shape()``).
        features: the backbone features fed (as random tensors) to the head.
        batch_size: examples per generated batch.
        seed: seeds the example data, random features and module initialisation (the global RNG is restored).

    Returns:
        A ValidationReport; it never raises for a plugin's bug.
    """
    options = dict(options or {})
    kind = getattr(cls, "kind", None)
    label = kind if isinstance(kind, str) else getattr(cls, "__name__", repr(cls))
    problems: list[str] = []
    checks: list[str] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            _static_checks(cls, _Checker(label, problems, checks))
        except _Failed:
            return ValidationReport(kind=label, ok=False, problems=problems, checks=checks)
        roles = list(cls.roles)
        if "role" in options:
            try:
                roles = [Role(options.pop("role"))]
            except ValueError as e:
                problems.append(f"{label}: role option: {e}")
                roles = []
        for role in roles:
            try:
                _role_checks(cls, role, options, latent, features, batch_size, seed,
                             _Checker(f"{label} (role {role.value})", problems, checks))
            except _Failed:
                continue
            except Exception as e:  # a bug outside any named check: still a problem, never an exception
                problems.append(f"{label} (role {role.value}): unexpected {type(e).__name__}: {e}")
    return ValidationReport(kind=label, ok=not problems, problems=problems, checks=checks)


__all__ = [
    "ValidationReport",
    "is_bool",
    "modality_name",
    "non_negative_int",
    "one_of",
    "option",
    "optional_names",
    "pixel_value",
    "positive_float",
    "positive_int",
    "unit_interval",
    "validate_modality",
]
