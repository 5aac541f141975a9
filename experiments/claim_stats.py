"""The statistics behind a claim's verdict: a mean with a 95% hierarchical bootstrap interval, and the verdict.

A setting is measured on several seeds (trainings), each scored on one or more draws (independent sample sets of
the same model). The interval resamples both levels: seeds with replacement, then, within every resampled seed, its
draws with replacement; the statistic (a mean, or the ratio or difference of two paired settings' means, the seeds
matched by seed number) is recomputed on every resample and the interval is the percentiles of those. The RNG
seed is fixed, so a report regenerates identically.

A verdict compares the interval with a target: "held" when the whole interval is on the target's side,
"missed" when it is wholly on the other side, "inconclusive" otherwise, and always with fewer than ``MIN_SEEDS``
seeds (the interval then covers the draws' noise, not the training's).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence

import attrs
import numpy as np

RESAMPLES = 10_000
RNG_SEED = 0
LEVEL = 0.95
MIN_SEEDS = 2
HELD, MISSED, INCONCLUSIVE = "held", "missed", "inconclusive"
Draws = Sequence[Sequence[float]]
"""Per seed, its per-draw values (one value: a single draw)."""


@attrs.frozen
class Estimate:
    """A statistic over seeds and draws.

    Attributes:
        mean: the statistic on all the data (a mean of per-seed means, or their ratio / difference).
        low, high: the interval's ends (None when undefined: one seed with one draw).
        per_seed: the statistic of every seed alone, in seed order.
        seeds: the number of seeds.
        draws: the number of draws of each seed (of the first setting for a paired statistic).
    """

    mean: float
    low: float | None
    high: float | None
    per_seed: tuple[float, ...]
    seeds: int
    draws: tuple[int, ...]


@attrs.frozen
class Target:
    """Where a claim's statistic must lie: ``op bound`` for the whole interval (and ``op mean_bound`` for the mean).

    Attributes:
        op: "<=", "<", ">=" or ">".
        bound: what the interval's far end is compared with.
        mean_bound: what the mean must also satisfy for "held" (None: nothing).
    """

    op: str
    bound: float
    mean_bound: float | None = None

    def describe(self, unit: Callable[[float], str] = lambda v: f"{v:g}") -> str:
        """E.g. "95% interval <= 1.1 and mean <= 1.05"."""
        text = f"95% interval {self.op} {unit(self.bound)}"
        return text + (f" and mean {self.op} {unit(self.mean_bound)}" if self.mean_bound is not None else "")


@attrs.frozen
class Verdict:
    """held / missed / inconclusive, with why."""

    status: str
    reason: str


_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


def _seed_means(draws: Sequence[np.ndarray]) -> np.ndarray:
    return np.array([float(np.mean(d)) for d in draws])


def _check(draws: Draws) -> list[np.ndarray]:
    if not draws or any(len(d) == 0 for d in draws):
        raise ValueError("every seed needs at least one draw")
    return [np.asarray(d, dtype=float) for d in draws]


def _resampled_seed_means(draws: list[np.ndarray], picks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(resamples, seeds): each picked seed's mean over its draws resampled with replacement."""
    out = np.empty(picks.shape)
    for k, d in enumerate(draws):
        where = picks == k
        m = int(where.sum())
        if m:
            out[where] = d[rng.integers(0, len(d), size=(m, len(d)))].mean(axis=1)
    return out


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2 * 100
    if np.isfinite(values).all():
        lo, hi = np.percentile(values, [tail, 100 - tail])
    else:  # an infinite statistic (a target never reached): no interpolation across it
        lo, hi = np.percentile(values, tail, method="lower"), np.percentile(values, 100 - tail, method="higher")
    return float(lo), float(hi)


def _defined(draws: Sequence[np.ndarray]) -> bool:
    return len(draws) > 1 or len(draws[0]) > 1


def bootstrap_mean(draws: Draws, resamples: int = RESAMPLES, seed: int = RNG_SEED, level: float = LEVEL) -> Estimate:
    """The mean over seeds of the per-seed means over draws, with its hierarchical bootstrap interval."""
    d = _check(draws)
    per_seed = _seed_means(d)
    low = high = None
    if _defined(d):
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, len(d), size=(resamples, len(d)))
        low, high = _interval(_resampled_seed_means(d, picks, rng).mean(axis=1), level)
    return Estimate(float(per_seed.mean()), low, high, tuple(map(float, per_seed)), len(d), tuple(map(len, d)))


def _combine(a: np.ndarray, b: np.ndarray, op: str) -> np.ndarray:
    if op == "ratio":
        with np.errstate(divide="ignore", invalid="ignore"):
            return a / b
    if op == "difference":
        return a - b
    raise ValueError(f"op must be 'ratio' or 'difference', got {op!r}")


def bootstrap_paired(a: Draws, b: Draws, op: str = "ratio", resamples: int = RESAMPLES, seed: int = RNG_SEED,
                     level: float = LEVEL) -> Estimate:
    """mean(a) / mean(b) (op "ratio") or mean(a) - mean(b) ("difference") of two settings on the same seeds
    (``a[k]`` and ``b[k]`` are one seed's draws): the seeds are resampled together, each setting's draws apart."""
    da, db = _check(a), _check(b)
    if len(da) != len(db):
        raise ValueError(f"paired settings need the same seeds, got {len(da)} and {len(db)}")
    ma, mb = _seed_means(da), _seed_means(db)
    per_seed = _combine(ma, mb, op)
    mean = float(_combine(np.array(ma.mean()), np.array(mb.mean()), op))
    low = high = None
    if _defined(da) or _defined(db):
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, len(da), size=(resamples, len(da)))
        ra = _resampled_seed_means(da, picks, rng).mean(axis=1)
        rb = _resampled_seed_means(db, picks, rng).mean(axis=1)
        low, high = _interval(_combine(ra, rb, op), level)
    return Estimate(mean, low, high, tuple(map(float, per_seed)), len(da), tuple(map(len, da)))


def bootstrap_seeds(n_seeds: int, statistic: Callable[[tuple[int, ...]], float], resamples: int = RESAMPLES,
                    seed: int = RNG_SEED, level: float = LEVEL) -> Estimate:
    """A statistic of a multiset of seeds (given as sorted indices 0..n_seeds-1, repeats allowed) with its interval
    over seeds resampled with replacement (for measures without draws, e.g. a learning curve's steps ratio)."""
    if n_seeds < 1:
        raise ValueError("need at least one seed")
    cache: dict[tuple[int, ...], float] = {}

    def stat(idx: tuple[int, ...]) -> float:
        if idx not in cache:
            cache[idx] = float(statistic(idx))
        return cache[idx]

    per_seed = tuple(stat((k,)) for k in range(n_seeds))
    mean = stat(tuple(range(n_seeds)))
    low = high = None
    if n_seeds > 1:
        picks = np.sort(np.random.default_rng(seed).integers(0, n_seeds, size=(resamples, n_seeds)), axis=1)
        low, high = _interval(np.array([stat(tuple(int(i) for i in row)) for row in picks]), level)
    return Estimate(mean, low, high, per_seed, n_seeds, (1,) * n_seeds)


def verdict(est: Estimate | None, target: Target, min_seeds: int = MIN_SEEDS) -> Verdict:
    """held / missed / inconclusive (see the module's docstring); None: not run."""
    if est is None:
        return Verdict("not run under the protocol", "no result under the protocol")
    ok = _OPS[target.op]
    seeds = f"{est.seeds} seed{'s' * (est.seeds != 1)}"
    if est.low is None or est.high is None:
        return Verdict(INCONCLUSIVE, f"{seeds}, {est.draws[0]} draw: no interval")
    near, far = (est.low, est.high) if target.op in ("<=", "<") else (est.high, est.low)
    if math.isnan(near) or math.isnan(far):
        return Verdict(INCONCLUSIVE, "the interval is undefined (NaN)")
    if not ok(near, target.bound):
        return Verdict(MISSED if est.seeds >= min_seeds else INCONCLUSIVE,
                       f"the whole interval is {'above' if target.op in ('<=', '<') else 'below'} {target.bound:g}"
                       + ("" if est.seeds >= min_seeds else f", but {seeds} only"))
    if est.seeds < min_seeds:
        return Verdict(INCONCLUSIVE, f"{seeds}: the interval covers the draws, not the trainings")
    if not ok(far, target.bound):
        return Verdict(INCONCLUSIVE, f"the interval straddles {target.bound:g}")
    if target.mean_bound is not None and not ok(est.mean, target.mean_bound):
        return Verdict(INCONCLUSIVE, f"the interval is within {target.bound:g} but the mean {est.mean:.4g} is not "
                                     f"{target.op} {target.mean_bound:g}")
    return Verdict(HELD, f"the whole interval is {target.op} {target.bound:g}"
                   + (f" and the mean {target.op} {target.mean_bound:g}" if target.mean_bound is not None else ""))


def combine(verdicts: Sequence[Verdict]) -> tuple[Verdict, int]:
    """All parts of a claim together (e.g. every generation mode): missed when one is missed, held when all are
    held, else inconclusive; with the index of the part that decides (the first missed or inconclusive one)."""
    if not verdicts:
        raise ValueError("nothing to combine")
    for status in (MISSED, INCONCLUSIVE):
        for i, v in enumerate(verdicts):
            if v.status == status:
                return v, i
    return Verdict(HELD, f"every part held ({len(verdicts)})"), 0
