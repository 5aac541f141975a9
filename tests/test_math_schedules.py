"""Property tests of the noise schedules (beta_t, alpha_t, abar_t) and the aggregation weights (w_t, lambda_t).

docs/math.md sections 1 and 2. The hypothesis strategies defined here (``noise_schedules``, ``weight_schedules``)
are reused by the other tests/test_math_*.py files.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from ddpm_reference import cosine_betas, linear_betas
from hypothesis import assume, given
from hypothesis import strategies as st

from mtd_core.diffusion.forward import ForwardProcess
from mtd_core.diffusion.noise import NoiseSchedule, respaced_timesteps
from mtd_core.diffusion.weights import (
    ConstantWeight,
    CustomLambda,
    CustomWeight,
    RatioWindow,
    WeightSchedule,
    WindowedLambda,
    ZeroWeight,
    lambda_from_w,
    peak_ratio,
    w_from_lambda,
    weight_schedule_from_config,
)
from mtd_core.errors import ScheduleError

# -- strategies (shared with the other math test files) ----------------------------------------------------------

unit = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def noise_schedules(draw: st.DrawFn, min_T: int = 2, max_T: int = 60, max_beta: float = 0.9) -> NoiseSchedule:
    """A linear, cosine or custom schedule with T in [min_T, max_T] (custom betas up to ``max_beta``).

    Linear betas are stretched by 1000/T, so beta_end is drawn below T/1000 to keep every beta_t under 1.
    """
    T = draw(st.integers(min_T, max_T))
    kind = draw(st.sampled_from(["linear", "cosine", "custom"]))
    if kind == "linear":
        top = min(0.02, 0.95 * T / 1000.0)
        beta_end = draw(st.floats(top / 20, top))
        beta_start = draw(st.floats(beta_end / 200, beta_end))
        return NoiseSchedule.linear(T, beta_start, beta_end)
    if kind == "cosine":
        return NoiseSchedule.cosine(T, s=draw(st.floats(0.001, 0.02)))
    return NoiseSchedule.custom(draw(st.lists(st.floats(1e-4, max_beta), min_size=T, max_size=T)))


@st.composite
def window_fractions(draw: st.DrawFn) -> tuple[float, float, float]:
    """(start, center, end) with 0 <= start < center < end <= 1 and gaps of at least 0.05."""
    start = draw(st.floats(0.0, 0.6))
    center = draw(st.floats(start + 0.05, 0.8))
    end = draw(st.floats(center + 0.05, 1.0))
    return start, center, end


@st.composite
def weight_schedules(draw: st.DrawFn, T: int, allow_free_w: bool = True) -> WeightSchedule:
    """A windowed lambda, a custom lambda profile ending at 0, zero, or (``allow_free_w``) free custom w_t
    with a relaxed lambda_T tolerance (so that lambda_T != 0 is exercised too)."""
    kinds = ["windowed", "custom_lambda", "zero"] + (["custom_w"] if allow_free_w else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "windowed":
        start, center, end = draw(window_fractions())
        return WindowedLambda(peak=draw(st.floats(-3.0, 3.0)), start=start, center=center, end=end)
    if kind == "custom_lambda":
        return CustomLambda([*draw(st.lists(st.floats(-3.0, 3.0), min_size=T - 1, max_size=T - 1)), 0.0])
    if kind == "zero":
        return ZeroWeight()
    return CustomWeight(draw(st.lists(st.floats(-2.0, 2.0), min_size=T, max_size=T)), lambda_T_tol=1e6)


def closed_sum_lambda(w: list[float], alpha: list[float]) -> list[float]:
    """lambda_t = sum_{s<=t} sqrt(abar_t / abar_{s-1}) w_s, with abar as a plain Python product (eq. of
    docs/math.md section 2); ``w`` and ``alpha`` indexed t = 0..T."""
    abar = [1.0]
    for a in alpha[1:]:
        abar.append(abar[-1] * a)
    return [sum(math.sqrt(abar[t] / abar[s - 1]) * w[s] for s in range(1, t + 1)) for t in range(len(w))]


# -- noise schedules ------------------------------------------------------------------------------------------------


@given(noise_schedules())
def test_schedule_quantities_follow_their_definitions(noise: NoiseSchedule) -> None:
    beta, alpha, abar, bt = noise.beta, noise.alpha, noise.abar, noise.beta_tilde
    T = noise.T
    assert beta.dtype == alpha.dtype == abar.dtype == bt.dtype == torch.float64
    assert beta.shape == alpha.shape == abar.shape == bt.shape == (T + 1,)
    assert beta[0] == 0 and alpha[0] == 1 and abar[0] == 1 and bt[0] == 0 and bt[1] == 0
    prod = 1.0
    for t in range(1, T + 1):
        assert alpha[t] == 1 - beta[t]
        prod *= 1 - float(beta[t])
        assert math.isclose(float(abar[t]), prod, rel_tol=1e-12)
        if t >= 2:  # beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t) <= beta_t
            expected = float(beta[t]) * (1 - float(abar[t - 1])) / (1 - float(abar[t]))
            assert math.isclose(float(bt[t]), expected, rel_tol=1e-12)
            assert 0 < bt[t] <= beta[t]
    assert (abar[1:] < abar[:-1]).all() and (abar > 0).all()


@given(st.integers(2, 60), st.floats(1e-5, 0.01), st.floats(0.01, 0.02), st.floats(0.001, 0.02))
def test_linear_and_cosine_betas_match_the_papers(T: int, beta_start: float, beta_end: float, s: float) -> None:
    beta_start, beta_end = beta_start * T / 1000, beta_end * T / 1000  # keep 1000/T * beta_end < 1
    lin = NoiseSchedule.linear(T, beta_start, beta_end)
    torch.testing.assert_close(lin.betas, torch.tensor(linear_betas(T, beta_start, beta_end), dtype=torch.float64),
                               rtol=1e-12, atol=1e-15)
    cos = NoiseSchedule.cosine(T, s)
    torch.testing.assert_close(cos.betas, torch.tensor(cosine_betas(T, s), dtype=torch.float64),
                               rtol=1e-9, atol=1e-12)


def test_default_linear_schedule_is_ddpms() -> None:
    noise = NoiseSchedule.linear()
    assert noise.T == 1000
    assert math.isclose(float(noise.betas[0]), 1e-4) and math.isclose(float(noise.betas[-1]), 0.02)
    assert 1e-5 < float(noise.abar[-1]) < 1e-4  # DDPM's abar_T ~ 4e-5: z_T is almost pure noise


@given(noise_schedules())
def test_noise_schedule_config_round_trips(noise: NoiseSchedule) -> None:
    config = json.loads(json.dumps(noise.to_config()))  # a plain, JSON-representable dict
    again = NoiseSchedule.from_config(config)
    assert again == noise and torch.equal(again.betas, noise.betas)
    assert again.kind == noise.kind and again.to_config() == config
    direct = NoiseSchedule(noise.betas)  # built from betas alone: still round-trips
    assert NoiseSchedule.from_config(json.loads(json.dumps(direct.to_config()))) == noise


@pytest.mark.parametrize(
    ("betas", "index"),
    [([0.0], 1), ([1.0], 1), ([0.1, -0.2], 2), ([0.1, 0.2, float("nan")], 3), ([float("inf")], 1), ([0.5, 1.5], 2)],
)
def test_betas_outside_the_open_unit_interval_are_rejected(betas: list[float], index: int) -> None:
    with pytest.raises(ScheduleError, match=rf"beta_t must lie in \(0, 1\); beta_{index} = "):
        NoiseSchedule.custom(betas)


@pytest.mark.parametrize("betas", [torch.zeros(0), torch.full((2, 2), 0.1)])
def test_betas_must_be_a_non_empty_vector(betas: torch.Tensor) -> None:
    with pytest.raises(ScheduleError, match="non-empty 1-D tensor"):
        NoiseSchedule(betas)


def test_bad_noise_configs_are_rejected_with_the_reason() -> None:
    with pytest.raises(ScheduleError, match="unknown kind 'quadratic'"):
        NoiseSchedule.from_config({"kind": "quadratic", "T": 10})
    with pytest.raises(ScheduleError, match="bad arguments"):
        NoiseSchedule.from_config({"kind": "cosine", "T": 10, "beta_end": 0.2})
    with pytest.raises(ScheduleError, match=r"T must be an integer in 1..100000, got 10.0"):
        NoiseSchedule.from_config({"kind": "linear", "T": 10.0})
    with pytest.raises(ScheduleError, match=r"unknown kind \['linear'\]"):
        NoiseSchedule.from_config({"kind": ["linear"]})
    with pytest.raises(ScheduleError, match=r"1000/T = 50.*T = 20.*becomes 1\b.*use T > 20") as e:
        NoiseSchedule.linear(20)
    assert "\n" not in str(e.value)


@given(st.integers(1, 200), st.data())
def test_respaced_timesteps_are_increasing_and_end_at_T(T: int, data: st.DataObject) -> None:
    steps = data.draw(st.integers(1, T))
    for kind in ("uniform", "quad"):
        ts = respaced_timesteps(T, steps, kind)
        assert ts.numel() == steps and int(ts[-1]) == T and int(ts[0]) >= 1
        assert (ts[1:] > ts[:-1]).all()
    for bad in (T + 1, float(steps), str(steps), True):
        with pytest.raises(ScheduleError, match=rf"steps must be in 1..{T}, got"):
            respaced_timesteps(T, bad)  # type: ignore[arg-type]
    leading = respaced_timesteps(T, steps, "leading")  # diffusers' DDIMScheduler spacing, shifted to 1..T
    assert leading.tolist() == [1 + k * (T // steps) for k in range(steps)] and int(leading[-1]) <= T
    with pytest.raises(ScheduleError, match=r"spacing must be one of \['uniform', 'quad', 'leading', 'logsnr', "
                                            r"'karras'\], got 'log'"):
        respaced_timesteps(T, steps, "log")


@given(st.integers(2, 1000), st.data(), st.sampled_from(["logsnr", "karras"]))
def test_noise_level_spacings_are_distinct_increasing_and_end_at_T(T: int, data: st.DataObject, kind: str) -> None:
    steps = data.draw(st.integers(1, min(T, 60)))
    abar = NoiseSchedule.linear(T, 1e-4, min(0.02, T / 1000 * 0.999)).abar if T > 20 else NoiseSchedule.cosine(T).abar
    ts = respaced_timesteps(T, steps, kind, abar)
    assert ts.numel() == steps and int(ts[-1]) == T and int(ts[0]) >= 1
    assert (ts[1:] > ts[:-1]).all()
    with pytest.raises(ScheduleError, match=rf"respacing '{kind}': needs the schedule's abar_t"):
        respaced_timesteps(T, steps, kind)


def test_logsnr_spacing_is_even_in_log_snr_and_karras_is_denser_at_small_noise() -> None:
    abar = NoiseSchedule.linear(1000).abar
    lam = 0.5 * torch.log(abar / (1 - abar))
    ts = respaced_timesteps(1000, 10, "logsnr", abar)
    gaps = (lam[ts[:-1]] - lam[ts[1:]]).tolist()
    assert max(gaps) / min(gaps) < 1.15  # nearest integer t: even up to rounding
    karras = respaced_timesteps(1000, 10, "karras", abar)
    uniform = respaced_timesteps(1000, 10, "uniform")
    assert int(karras[1]) < int(uniform[1]) and int(ts[1]) < int(uniform[1])


def test_respacing_a_jump_beyond_float64_resolution_is_rejected() -> None:
    noise = NoiseSchedule.custom([0.9] * 40)  # abar_t = 0.1^t
    # abar' is rebuilt from beta' = 1 - abar_t / abar_s: exact to ~1e-16 absolute, so ~1e-6 relative at 1e-10
    torch.testing.assert_close(noise.respace([10, 20, 25]).abar, noise.abar[[0, 10, 20, 25]], rtol=1e-5, atol=1e-16)
    with pytest.raises(ScheduleError, match=r"abar_t falls from 1e-10 at t = 10 to 1e-30 at t = 30.*"
                                            r"below float64 resolution") as e:
        noise.respace([10, 30])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("ts", [[], [0, 3], [3, 2], [2, 2], [1, 11], [1.5, 3]])

def test_respacing_rejects_bad_timesteps(ts: list[float]) -> None:
    with pytest.raises(ScheduleError, match="respacing: timesteps must be"):
        NoiseSchedule.linear(10, 1e-4, 0.005).respace(ts)


# -- lambda <-> w -----------------------------------------------------------------------------------------------


@given(noise_schedules(), st.data())
def test_lambda_and_w_conversions_are_exact_inverses(noise: NoiseSchedule, data: st.DataObject) -> None:
    T = noise.T
    w = torch.tensor([0.0, *data.draw(st.lists(st.floats(-5, 5), min_size=T, max_size=T))], dtype=torch.float64)
    lam = lambda_from_w(w, noise.alpha)
    torch.testing.assert_close(w_from_lambda(lam, noise.alpha), w, rtol=0, atol=1e-12 * (1 + float(lam.abs().max())))
    lam2 = torch.tensor([0.0, *data.draw(st.lists(st.floats(-5, 5), min_size=T, max_size=T))], dtype=torch.float64)
    torch.testing.assert_close(lambda_from_w(w_from_lambda(lam2, noise.alpha), noise.alpha), lam2, rtol=0, atol=1e-12)


@given(noise_schedules(), st.data())
def test_lambda_recursion_equals_the_closed_sum(noise: NoiseSchedule, data: st.DataObject) -> None:
    T = noise.T
    w = [0.0, *data.draw(st.lists(st.floats(-5, 5), min_size=T, max_size=T))]
    lam = lambda_from_w(torch.tensor(w, dtype=torch.float64), noise.alpha)
    expected = torch.tensor(closed_sum_lambda(w, noise.alpha.tolist()), dtype=torch.float64)
    torch.testing.assert_close(lam, expected, rtol=1e-10, atol=1e-12)


def test_constant_unit_weight_over_ddpm_schedule_is_rejected() -> None:
    noise = NoiseSchedule.linear(1000)
    w = [0.0] + [1.0] * 1000
    lam_T = closed_sum_lambda(w, noise.alpha.tolist())[-1]
    assert 113 < lam_T < 115  # z_T would be ~114 units of signal away from N(0, I)
    resolved = ConstantWeight(1.0, lambda_T_tol=1e3).resolve(noise, "caption")
    assert math.isclose(float(resolved.lam[-1]), lam_T, rel_tol=1e-10)
    with pytest.raises(ScheduleError, match=r"(?s)modality 'caption'.*lambda_T = 113\.8.*tolerance 0\.01.*N\(0, I\)"):
        ForwardProcess(noise, {"label": ZeroWeight(), "caption": ConstantWeight(1.0)})


# -- weight schedules ---------------------------------------------------------------------------------------------


@given(noise_schedules(), st.data())
def test_resolved_weights_are_consistent(noise: NoiseSchedule, data: st.DataObject) -> None:
    ws = data.draw(weight_schedules(noise.T))
    r = ws.resolve(noise, "m")
    assert r.w.shape == r.lam.shape == (noise.T + 1,) and r.w.dtype == r.lam.dtype == torch.float64
    assert r.w[0] == 0 and r.lam[0] == 0
    scale = 1 + float(r.lam.abs().max())
    torch.testing.assert_close(r.w, w_from_lambda(r.lam, noise.alpha), rtol=0, atol=1e-12 * scale)
    if isinstance(ws, (WindowedLambda, CustomLambda, ZeroWeight)):
        assert r.lam[-1] == 0  # lambda_T = 0 exactly: z_T ~ N(0, I) up to abar_T
    if isinstance(ws, ZeroWeight):
        assert not r.w.any() and not r.lam.any()
    if isinstance(ws, WindowedLambda):
        u = torch.arange(noise.T + 1, dtype=torch.float64) / noise.T
        outside = (u <= ws.start) | (u >= ws.end)
        assert not r.lam[outside].any()
        assert (r.lam.abs() <= abs(ws.peak) + 1e-12).all()
        assert (torch.sign(r.lam[~outside]) * math.copysign(1, ws.peak) >= 0).all()
    if isinstance(ws, CustomLambda):
        assert r.lam[1:].tolist() == list(ws.values)


def test_windowed_lambda_rises_to_its_peak_at_the_centre() -> None:
    noise = NoiseSchedule.linear(10, 1e-4, 0.008)
    lam = WindowedLambda(peak=2.0, start=0.2, center=0.5, end=0.8).resolve(noise).lam
    assert lam[5] == 2.0 and lam[:3].eq(0).all() and lam[8:].eq(0).all()
    assert (lam[3:5] > 0).all() and (lam[3:5] < 2).all() and (lam[6:8] > 0).all() and (lam[6:8] < 2).all()
    assert lam[3] < lam[4] and lam[6] > lam[7]


@given(st.floats(0.01, 50.0), st.sampled_from([(0.0, 0.4, 0.9), (0.1, 0.3, 1.0), (0.0, 0.5, 0.95)]),
       st.sampled_from(["linear", "cosine"]))
def test_ratio_window_bounds_the_ratio_by_rho_and_ends_at_zero(rho: float, window: tuple, kind: str) -> None:
    noise = NoiseSchedule.linear(200) if kind == "linear" else NoiseSchedule.cosine(200)
    ws = RatioWindow(rho, *window)
    r = ws.resolve(noise)
    ratio = r.lam[1:] / noise.abar[1:].sqrt()
    assert float(ratio.max()) <= rho * (1 + 1e-12) and peak_ratio(r.lam, noise.abar) == pytest.approx(rho, rel=0.02)
    assert float(r.lam[-1]) == 0.0 and float(r.lam[0]) == 0.0
    assert weight_schedule_from_config(json.loads(json.dumps(ws.to_config()))) == ws


@pytest.mark.parametrize("rho", [0.0, -1.0, math.inf, math.nan, True, "2"])
def test_ratio_window_rejects_rho_outside_the_open_half_line(rho: object) -> None:
    with pytest.raises(ScheduleError, match=r"modality 'label': ratio weight schedule: rho must lie in \(0, inf\)"):
        weight_schedule_from_config({"kind": "ratio", "rho": rho}, "label")


@given(noise_schedules(), st.data())
def test_weight_schedule_config_round_trips(noise: NoiseSchedule, data: st.DataObject) -> None:
    ws = data.draw(weight_schedules(noise.T))
    config = json.loads(json.dumps(ws.to_config()))
    again = weight_schedule_from_config(config, "m")
    assert again == ws and again.to_config() == config
    a, b = again.resolve(noise), ws.resolve(noise)
    assert torch.equal(a.w, b.w) and torch.equal(a.lam, b.lam)
    assert weight_schedule_from_config(ws) is ws


def test_custom_weights_of_the_wrong_length_name_the_modality() -> None:
    noise = NoiseSchedule.linear(100)
    for ws in (CustomWeight([0.1] * 99), CustomLambda([0.0] * 101)):
        with pytest.raises(ScheduleError, match=rf"modality 'label': weight schedule '{ws.kind}' has "
                                                rf"{len(ws.values)} steps, the noise schedule has T = 100"):
            ForwardProcess(noise, {"label": ws})


def test_non_finite_weights_name_the_modality() -> None:
    noise = NoiseSchedule.linear(100)  # a plugin's schedule may still compute non-finite values: caught when resolved
    nan = type("NaN", (CustomLambda,), {"_w_or_lambda": lambda self, noise: torch.full((noise.T + 1,), math.nan)})
    with pytest.raises(ScheduleError, match="modality 'caption': weight schedule 'custom_lambda' has non-finite"):
        ForwardProcess(noise, {"caption": nan([0.0] * 100)})
    with pytest.raises(ScheduleError, match=r"^windowed weight schedule: peak must be a finite number, got inf$"):
        WindowedLambda(peak=float("inf"))


@pytest.mark.parametrize(
    ("start", "center", "end"), [(0.5, 0.5, 0.9), (0.6, 0.4, 0.9), (0.1, 0.9, 0.9), (0.1, 0.5, 1.2), (-0.1, 0.4, 0.9)]
)
def test_windowed_fractions_out_of_order_are_rejected(start: float, center: float, end: float) -> None:
    with pytest.raises(ScheduleError, match=r"need 0 <= start < center < end <= 1"):
        WindowedLambda(start=start, center=center, end=end)
    config = {"kind": "windowed", "start": start, "center": center, "end": end}
    with pytest.raises(ScheduleError, match=rf"modality 'mask': windowed weight schedule: need .* got start={start}"):
        weight_schedule_from_config(config, "mask")


def test_bad_weight_configs_name_the_modality() -> None:
    with pytest.raises(ScheduleError, match="modality 'label': unknown weight schedule 'window'; expected one of"):
        weight_schedule_from_config({"kind": "window"}, "label")
    with pytest.raises(ScheduleError, match="modality 'label': a weight schedule config needs a 'kind' key"):
        weight_schedule_from_config({"peak": 1.0}, "label")
    with pytest.raises(ScheduleError, match="modality 'label': weight schedule 'windowed': .*height"):
        weight_schedule_from_config({"kind": "windowed", "height": 1.0}, "label")
    with pytest.raises(ScheduleError, match=r"modality 'label': custom_w weight schedule: values must be .*'a', 'b'"):
        weight_schedule_from_config({"kind": "custom_w", "values": ["a", "b"]}, "label")


@given(noise_schedules(max_T=30), st.floats(0.05, 5.0))
def test_lambda_tolerance_is_a_bound_on_lambda_T(noise: NoiseSchedule, value: float) -> None:
    lam_T = abs(closed_sum_lambda([0.0] + [value] * noise.T, noise.alpha.tolist())[-1])
    assume(abs(lam_T - 1.0) > 1e-6)
    ws = ConstantWeight(value, lambda_T_tol=1.0)
    if lam_T > 1.0:
        with pytest.raises(ScheduleError, match=r"modality 'rep': .*tolerance 1\)"):
            ws.resolve(noise, "rep")
    else:
        assert math.isclose(float(ws.resolve(noise, "rep").lam[-1]), lam_T, rel_tol=1e-10)


@pytest.mark.parametrize("schedule", [WindowedLambda(), RatioWindow()])
def test_the_default_windows_inject_nothing_at_the_default_read_out_t(schedule: WeightSchedule) -> None:
    """A head trained where its encoding is in z_t learns to read it from there, so the default window must open
    after the default read-out t (docs/sampling.md, "Read-out: which t")."""
    from mtd_core.sampling.options import DEFAULT_READ_T

    noise = NoiseSchedule.linear(1000)
    lam = schedule.resolve(noise).lam
    read = max(round(u * noise.T) for u in DEFAULT_READ_T)
    assert torch.all(lam[: read + 1] == 0)
    assert lam[read + 1:].max() > 0.5  # and it still injects the encoding further up
