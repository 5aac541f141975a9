"""The FID curve's extrapolation to infinitely many samples (Chong & Forsyth 2020), a pure function, and the
presets' draws: no model is trained here."""

from __future__ import annotations

import pytest

from experiments.measures import fid_infinity
from experiments.presets import PRESETS, get_preset
from mtd_core.errors import ConfigError


def test_a_line_in_one_over_n_is_recovered_exactly() -> None:
    ns = [2500, 5000, 10000]
    fids = [3.0 + 4000.0 / n for n in ns]  # FID_inf 3, slope 4000
    assert fid_infinity(ns, fids) == pytest.approx(3.0, abs=1e-9)
    assert fid_infinity([12, 24], [5.0 + 12.0 / 12, 5.0 + 12.0 / 24]) == pytest.approx(5.0, abs=1e-9)


def test_the_fit_is_least_squares_over_every_point() -> None:
    ns, fids = [1, 2, 4], [4.0, 2.0, 2.0]  # x = 1, 0.5, 0.25: the least-squares line y = 1 + 20/7 x, no point on it
    assert fid_infinity(ns, fids) == pytest.approx(1.0)


def test_fewer_than_two_sample_counts_give_no_extrapolation() -> None:
    assert fid_infinity([], []) is None
    assert fid_infinity([5000], [2.0]) is None
    assert fid_infinity([5000, 5000], [2.0, 2.1]) is None
    with pytest.raises(ValueError, match="2 sample counts but 1 FIDs"):
        fid_infinity([1, 2], [1.0])


def test_the_presets_draw_their_samples_in_equal_draws() -> None:
    assert (get_preset("cpu").n_samples, get_preset("cpu").n_draws, get_preset("cpu").per_draw) == (10000, 2, 5000)
    assert (get_preset("gpu").n_samples, get_preset("gpu").n_draws) == (10000, 2)
    assert get_preset("smoke").n_draws == get_preset("digits").n_draws == 1
    assert all(p.dataset.get("holdout") == 5000 for p in (PRESETS["cpu"], PRESETS["gpu"]))
    with pytest.raises(ConfigError, match="n_draws = 3 must be >= 1 and divide n_samples = 10000"):
        get_preset("cpu").with_overrides(n_draws=3)
