"""The claim statistics (experiments/claim_stats.py): hierarchical bootstrap intervals and verdicts on inputs whose
outcome can be checked by hand."""

from __future__ import annotations

import math

import pytest

from experiments import claim_stats as cs
from experiments.claim_stats import Estimate, Target

FID_RATIO = Target("<=", 1.10, 1.05)


def test_two_seeds_of_one_draw_give_the_extreme_resamples_as_the_interval() -> None:
    # resamples of seeds {1, 3}: (1, 1) a quarter of the time, (3, 3) a quarter: the 2.5th and 97.5th percentiles
    est = cs.bootstrap_mean([[1.0], [3.0]])
    assert est.mean == 2.0 and est.per_seed == (1.0, 3.0) and est.seeds == 2 and est.draws == (1, 1)
    assert (est.low, est.high) == (1.0, 3.0)


def test_the_mean_is_over_seeds_of_the_means_over_draws() -> None:
    est = cs.bootstrap_mean([[1.0, 3.0], [4.0]])
    assert est.per_seed == (2.0, 4.0) and est.mean == 3.0 and est.draws == (2, 1)
    assert est.low is not None and est.high is not None and 1.0 <= est.low <= est.mean <= est.high <= 4.0


def test_the_interval_is_deterministic_for_a_fixed_rng_seed() -> None:
    a = [[10.0, 10.4], [11.0, 10.7], [9.8, 10.1]]
    b = [[10.2, 10.0], [10.5, 10.9], [10.0, 9.7]]
    first, again = cs.bootstrap_paired(a, b), cs.bootstrap_paired(a, b)
    assert first == again
    other = cs.bootstrap_paired(a, b, seed=1)
    assert other.mean == first.mean and (other.low, other.high) != (first.low, first.high)


def test_the_interval_contains_the_point_estimate() -> None:
    a = [[5.2, 5.5], [5.9, 5.6], [5.1, 5.4], [6.0, 5.8]]
    b = [[5.0, 5.3], [5.5, 5.4], [5.2, 5.2], [5.6, 5.7]]
    for est in (cs.bootstrap_paired(a, b), cs.bootstrap_paired(a, b, "difference"), cs.bootstrap_mean(a)):
        assert est.low is not None and est.high is not None and est.low <= est.mean <= est.high
        assert est.low < est.high


def test_paired_ratio_and_difference_per_seed() -> None:
    est = cs.bootstrap_paired([[2.0], [3.0]], [[1.0], [2.0]])
    assert est.per_seed == (2.0, 1.5) and est.mean == pytest.approx(2.5 / 1.5)
    diff = cs.bootstrap_paired([[2.0], [3.0]], [[1.0], [2.0]], "difference")
    assert diff.per_seed == (1.0, 1.0) and diff.mean == 1.0 and (diff.low, diff.high) == (1.0, 1.0)
    with pytest.raises(ValueError, match="same seeds"):
        cs.bootstrap_paired([[1.0]], [[1.0], [2.0]])
    with pytest.raises(ValueError, match="at least one draw"):
        cs.bootstrap_mean([[1.0], []])


def _ratio(scale: float, spread: float = 0.02) -> Estimate:
    single = [[10.0, 10.2], [9.8, 10.0], [10.1, 10.3]]
    joint = [[v * scale * (1 + spread * (-1) ** (i + k)) for k, v in enumerate(d)] for i, d in enumerate(single)]
    return cs.bootstrap_paired(joint, single)


def test_fid_ratios_far_below_the_target_hold() -> None:
    est = _ratio(0.9)
    assert est.high is not None and est.high < 1.0
    v = cs.verdict(est, FID_RATIO)
    assert v.status == cs.HELD and "<= 1.1" in v.reason


def test_fid_ratios_far_above_the_target_are_missed() -> None:
    est = _ratio(1.4)
    assert est.low is not None and est.low > 1.2
    assert cs.verdict(est, FID_RATIO).status == cs.MISSED


def test_fid_ratios_straddling_the_target_are_inconclusive() -> None:
    est = _ratio(1.1, spread=0.1)
    assert est.low is not None and est.high is not None and est.low < 1.1 < est.high
    v = cs.verdict(est, FID_RATIO)
    assert v.status == cs.INCONCLUSIVE and "straddles 1.1" in v.reason


def test_the_mean_target_is_needed_as_well_as_the_interval() -> None:
    est = Estimate(1.07, 1.04, 1.09, (1.06, 1.08), 2, (2, 2))
    v = cs.verdict(est, FID_RATIO)
    assert v.status == cs.INCONCLUSIVE and "mean 1.07" in v.reason
    assert cs.verdict(Estimate(1.04, 1.0, 1.09, (1.0, 1.08), 2, (2, 2)), FID_RATIO).status == cs.HELD


def test_a_lower_bound_target() -> None:
    coherence = Target(">=", 0.85)
    assert cs.verdict(cs.bootstrap_mean([[0.90, 0.91], [0.93, 0.92]]), coherence).status == cs.HELD
    assert cs.verdict(cs.bootstrap_mean([[0.60, 0.62], [0.58, 0.61]]), coherence).status == cs.MISSED
    assert cs.verdict(cs.bootstrap_mean([[0.80, 0.81], [0.90, 0.89]]), coherence).status == cs.INCONCLUSIVE
    strict = Target("<", 1.0)
    assert cs.verdict(Estimate(1.0, 1.0, 1.0, (1.0, 1.0), 2, (1, 1)), strict).status == cs.MISSED


def test_one_seed_is_inconclusive_with_its_reason() -> None:
    one = cs.bootstrap_mean([[0.95]])
    assert one.low is None and one.high is None and one.mean == 0.95
    v = cs.verdict(one, Target(">=", 0.85))
    assert v.status == cs.INCONCLUSIVE and "1 seed" in v.reason
    draws = cs.bootstrap_mean([[0.95, 0.96, 0.97]])  # an interval of the draws alone
    assert draws.low is not None
    v = cs.verdict(draws, Target(">=", 0.85))
    assert v.status == cs.INCONCLUSIVE and "1 seed" in v.reason
    assert cs.verdict(None, FID_RATIO).status == "not run under the protocol"


def test_combining_parts() -> None:
    held, missed, unsure = (cs.Verdict(s, s) for s in (cs.HELD, cs.MISSED, cs.INCONCLUSIVE))
    assert cs.combine([held, unsure, missed]) == (missed, 2)
    assert cs.combine([held, unsure]) == (unsure, 1)
    assert cs.combine([held, held])[0].status == cs.HELD


def test_a_statistic_over_resampled_seeds() -> None:
    values = [0.5, 0.7, math.inf]
    est = cs.bootstrap_seeds(3, lambda idx: max(values[i] for i in idx))
    assert est.mean == math.inf and est.per_seed == (0.5, 0.7, math.inf) and est.low == 0.5 and est.high == math.inf
    assert cs.verdict(est, Target("<", 1.0)).status == cs.INCONCLUSIVE
    assert cs.bootstrap_seeds(1, lambda idx: 0.5).low is None
