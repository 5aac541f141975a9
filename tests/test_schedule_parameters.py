"""Every numeric parameter of a noise or weight schedule is checked: a string, bool, None, list, NaN or infinity is a
one-line ScheduleError naming the schedule and the parameter (tests/test_math_schedules.py tests the values)."""

from __future__ import annotations

import math
import re

import pytest
import torch

from mtd_core.diffusion.noise import NoiseSchedule
from mtd_core.diffusion.weights import ConstantWeight, CustomLambda, CustomWeight, WindowedLambda, ZeroWeight, \
    weight_schedule_from_config
from mtd_core.errors import ScheduleError


BAD_NOISE_PARAMETERS = [
    *[("linear", n, v) for n in ("beta_start", "beta_end") for v in (math.inf, math.nan, "0.02", True, None, 0, 1.5)],
    *[("cosine", "s", v) for v in (math.inf, -math.inf, math.nan, "0.008", False, None, [0.008], -0.5)],
    *[("custom", "betas", v) for v in ("0.1", None, 0.1, [0.1, "0.2"], [0.1, None], [True], [[0.1], [0.2]],
                                       torch.full((2, 2), 0.1), torch.tensor([True]), {"a": 0.1})],
]


@pytest.mark.parametrize(("kind", "name", "value"), BAD_NOISE_PARAMETERS)
def test_bad_schedule_parameters_are_named(kind: str, name: str, value: object) -> None:
    with pytest.raises(ScheduleError, match=rf"^noise schedule '{kind}': {name} must be a [^\n]*, got [^\n]*$"):
        NoiseSchedule.from_config({"kind": kind, name: value})


@pytest.mark.parametrize("value", ["abc", "1.0", True, None, [1.0], math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(("kind", "name"), [("constant", "value"), ("zero", "lambda_T_tol"), ("windowed", "peak"), *[
    (k, n) for k in ("windowed", "ratio") for n in ("start", "center", "end", "lambda_T_tol")]])
def test_numeric_weight_parameters_must_be_finite_numbers(kind: str, name: str, value: object) -> None:
    with pytest.raises(ScheduleError, match=rf"^modality 'label': {kind} weight schedule: {name} must be a finite "
                                            rf"number, got {re.escape(repr(value))}$"):
        weight_schedule_from_config({"kind": kind, name: value}, "label")


@pytest.mark.parametrize("values", ["abc", None, 0.5, [0.1, "a"], [0.1, None], [True, 0.1], [0.1, math.inf],
                                    [math.nan], [[0.1], [0.2]], torch.ones(2, 2), torch.tensor([True, False])])
@pytest.mark.parametrize("kind", ["custom_w", "custom_lambda"])
def test_custom_values_must_be_finite_numbers(kind: str, values: object) -> None:
    with pytest.raises(ScheduleError, match=rf"^modality 'm': {kind} weight schedule: values must be a list or 1-D "
                                            r"tensor of finite numbers, got [^\n]*$"):
        weight_schedule_from_config({"kind": kind, "values": values}, "m")


def test_weight_parameters_accept_integers_and_tensors() -> None:
    assert ConstantWeight(0, lambda_T_tol=1).value == 0 and WindowedLambda(2, 0, 0.5, 1).peak == 2
    assert CustomLambda(torch.tensor([0.5, 0])).values == (0.5, 0.0)
    assert CustomWeight(torch.tensor([1, 2])).values == (1.0, 2.0)
    with pytest.raises(ScheduleError, match=r"^zero weight schedule: lambda_T_tol must be >= 0, got -0.5$"):
        ZeroWeight(lambda_T_tol=-0.5)
    with pytest.raises(ScheduleError, match=r"unknown weight schedule \['windowed'\]"):
        weight_schedule_from_config({"kind": ["windowed"]})
