"""Tests of the metrics library (mtd_core.metrics) and the built-in metric plugins (mtd_plugins.metrics).

Distribution metrics are checked against closed forms for Gaussians and brute-force reference computations
written here; the feature network is trained on scikit-learn's digits (no download) with a small recipe.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

from mtd_core.metrics import (
    CacheWarning,
    EvalContext,
    FeatureNet,
    FeatureNetResult,
    FeatureRecipe,
    GaussianStats,
    Metric,
    MetricError,
    MetricReport,
    MetricWarning,
    classification_accuracy,
    classify,
    conditional_fidelity,
    cosine_consistency,
    features,
    fid,
    frechet_distance,
    joint_coherence,
    kid,
    precision_recall,
    psnr,
    reference_features,
    run_metrics,
    ssim,
    train_feature_net,
    noise_like_share,
    total_variation,
)
from mtd_core.metrics.kid import mmd2_unbiased

# The recipe the digits test documents (docs/metrics.md): ~1 s on one core, test accuracy ~0.98.
DIGITS_RECIPE = FeatureRecipe(epochs=5, batch=64, lr=3e-3, seed=0, width=32, feature_dim=64)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a test does may touch the user's ~/.cache/mtd: the default cache root is a temporary folder."""
    monkeypatch.setenv("MTD_CACHE_DIR", str(tmp_path / "default_cache"))


def _random_spd(d: int, gen: torch.Generator, rank: int | None = None) -> torch.Tensor:
    a = torch.randn(d, rank or d, generator=gen, dtype=torch.float64)
    return a @ a.T / (rank or d) + (0 if rank else 0.1) * torch.eye(d, dtype=torch.float64)


def _gaussian(n: int, mean: torch.Tensor, cov: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    chol = torch.linalg.cholesky(cov)
    return mean + torch.randn(n, mean.shape[0], generator=gen, dtype=torch.float64) @ chol.T


# ---------------------------------------------------------------------------------------------- FID
@given(d=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_frechet_distance_matches_closed_form(d: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    m1, m2 = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(d, generator=gen, dtype=torch.float64)
    c1, c2 = _random_spd(d, gen), _random_spd(d, gen)
    expected = (float(((m1 - m2) ** 2).sum()) + float(np.trace(c1.numpy() + c2.numpy()))
                - 2 * float(np.trace(scipy.linalg.sqrtm(c1.numpy() @ c2.numpy()).real)))
    got = frechet_distance(GaussianStats(m1, c1, 100), GaussianStats(m2, c2, 100))
    assert got == pytest.approx(expected, rel=1e-7, abs=1e-9)
    # symmetric in its arguments
    assert frechet_distance(GaussianStats(m2, c2, 100), GaussianStats(m1, c1, 100)) == pytest.approx(got, rel=1e-9, abs=1e-10)


def test_frechet_distance_singular_covariances_commuting_closed_form() -> None:
    # Covariances sharing an eigenbasis, with zero eigenvalues: FID = ||dm||^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    a = torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0, 1e-12], dtype=torch.float64)
    b = torch.tensor([1.0, 0.0, 0.0, 4.0, 3.0, 5.0], dtype=torch.float64)
    dm = torch.tensor([0.5, 0, 0, 0, 0, -1.0], dtype=torch.float64)
    got = frechet_distance(GaussianStats(dm, q @ torch.diag(a) @ q.T, 10), GaussianStats(torch.zeros(6, dtype=torch.float64),
                                                                                        q @ torch.diag(b) @ q.T, 10))
    expected = float((dm**2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    assert got == pytest.approx(expected, rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero() -> None:
    gen = torch.Generator().manual_seed(0)
    x = _gaussian(400, torch.zeros(8, dtype=torch.float64), _random_spd(8, gen), gen).float()
    r = fid(x, x)
    assert r.value < 1e-8
    assert (r.n_generated, r.n_reference, r.feature_dim) == (400, 400, 8)


def test_fid_grows_with_mean_shift_like_the_gaussian_closed_form() -> None:
    # Same covariance, means differing by delta: the population FID is exactly ||delta||^2.
    gen = torch.Generator().manual_seed(2)
    d, n = 4, 20000
    cov = _random_spd(d, gen)
    ref = _gaussian(n, torch.zeros(d, dtype=torch.float64), cov, gen)
    values = []
    for shift in (0.5, 1.0, 2.0):
        delta = torch.full((d,), shift / 2, dtype=torch.float64)  # ||delta||^2 = shift^2
        # a translated copy has exactly the same sample covariance: FID is ||delta||^2 to round-off
        assert fid(ref + delta, ref).value == pytest.approx(shift**2, rel=1e-9)
        # an independent sample: within sampling error (standard error here is about 0.02)
        value = fid(_gaussian(n, delta, cov, gen), ref).value
        assert value == pytest.approx(shift**2, rel=0.05, abs=0.08)
        values.append(value)
    assert values == sorted(values)


def test_fid_accepts_stats_and_reports_counts() -> None:
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(50, 3, generator=gen), torch.randn(70, 3, generator=gen) + 1
    from_stats = fid(x, GaussianStats.fit(y))
    assert from_stats.value == pytest.approx(fid(x, y).value, rel=1e-12)
    text = str(from_stats)
    assert "n_generated=50" in text and "n_reference=70" in text


def test_fid_sample_count_errors_and_warnings() -> None:
    gen = torch.Generator().manual_seed(4)
    with pytest.raises(MetricError, match=r"at least 2 samples \(a covariance needs two\), got 1"):
        fid(torch.randn(1, 4, generator=gen), torch.randn(10, 4, generator=gen))
    with pytest.warns(MetricWarning, match=r"n=5 samples but the features have D=8"):
        fid(torch.randn(5, 8, generator=gen), torch.randn(100, 8, generator=gen))
    with pytest.raises(MetricError, match="4 dimensions but the reference has 5"):
        fid(torch.randn(10, 4, generator=gen), torch.randn(10, 5, generator=gen))
    bad = torch.randn(10, 4, generator=gen)
    bad[3, 1] = float("nan")
    with pytest.raises(MetricError, match="sample 3 has a NaN"):
        fid(bad, torch.randn(10, 4, generator=gen))


# ---------------------------------------------------------------------------------------------- KID
def test_mmd2_unbiased_matches_a_brute_force_sum() -> None:
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(6, 3, generator=gen, dtype=torch.float64), torch.randn(6, 3, generator=gen, dtype=torch.float64)

    def k(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a @ b / 3 + 1) ** 3)

    m = 6
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_near_zero_for_same_distribution_and_positive_when_shifted() -> None:
    gen = torch.Generator().manual_seed(6)
    a, b = torch.randn(2000, 8, generator=gen), torch.randn(2000, 8, generator=gen)
    same = kid(a, b, n_subsets=50, subset_size=200, seed=0)
    shifted = kid(a, b + 0.5, n_subsets=50, subset_size=200, seed=0)
    # unbiased: the same-distribution mean lies within a few standard errors of 0
    assert abs(same.mean) < 4 * same.std / math.sqrt(same.n_subsets)
    assert shifted.mean > 10 * max(abs(same.mean), same.std / math.sqrt(same.n_subsets))
    assert shifted.mean - 3 * shifted.std > 0
    assert kid(a, b, n_subsets=5, subset_size=50, seed=3) == kid(a, b, n_subsets=5, subset_size=50, seed=3)
    assert "n_generated=2000" in str(same) and "n_reference=2000" in str(same)


def test_kid_subset_size_errors() -> None:
    x = torch.randn(10, 3)
    with pytest.raises(MetricError, match=r"subset_size must be an integer in \[2, 10\]"):
        kid(x, torch.randn(20, 3), subset_size=11)
    with pytest.raises(MetricError, match="at least 2 samples"):
        kid(x[:1], torch.randn(20, 3))


# ---------------------------------------------------------------------------------------------- precision / recall
def _brute_force_pr(gen: torch.Tensor, real: torch.Tensor, k: int) -> tuple[float, float]:
    def radii(s: torch.Tensor) -> list[float]:
        return [sorted(float((s[i] - s[j]).norm()) for j in range(len(s)) if j != i)[k - 1] for i in range(len(s))]

    def covered(q: torch.Tensor, s: torch.Tensor, r: list[float]) -> float:
        return sum(any(float((q[i] - s[j]).norm()) <= r[j] for j in range(len(s))) for i in range(len(q))) / len(q)

    return covered(gen, real, radii(real)), covered(real, gen, radii(gen))


@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 4))
def test_precision_recall_matches_brute_force(seed: int, k: int) -> None:
    g = torch.Generator().manual_seed(seed)
    gen, real = torch.randn(15, 2, generator=g, dtype=torch.float64) + 0.7, torch.randn(12, 2, generator=g, dtype=torch.float64)
    r = precision_recall(gen, real, k=k)
    assert (r.precision, r.recall) == pytest.approx(_brute_force_pr(gen, real, k))


def test_precision_recall_identical_disjoint_and_mode_dropping() -> None:
    g = torch.Generator().manual_seed(7)
    real = torch.cat([torch.randn(300, 4, generator=g), torch.randn(300, 4, generator=g) + 100])
    same = precision_recall(real, real)
    assert (same.precision, same.recall) == (1.0, 1.0)
    far = precision_recall(real + 1000, real)
    assert (far.precision, far.recall) == (0.0, 0.0)
    # generating only the first mode: still precise, but covers only about half of the real data
    dropped = precision_recall(torch.randn(300, 4, generator=g), real)
    assert dropped.precision > 0.9
    assert 0.35 < dropped.recall <= 0.5
    assert dropped.k == 3 and "n_generated=300" in str(dropped) and "n_reference=600" in str(dropped)


def test_precision_recall_needs_more_than_k_samples() -> None:
    with pytest.raises(MetricError, match=r"at least 4 samples \(each point needs k=3 neighbours besides itself\), got 3"):
        precision_recall(torch.randn(3, 2), torch.randn(10, 2), k=3)


# ---------------------------------------------------------------------------------------------- PSNR / SSIM
def test_psnr_closed_form_identical_and_range_invariance() -> None:
    g = torch.Generator().manual_seed(8)
    x = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64) * 1.6 - 0.8
    signs = torch.where(torch.rand(x.shape, generator=g) < 0.5, -1.0, 1.0).double()
    for delta in (0.01, 0.1):
        r = psnr(x + delta * signs, x, data_range=2.0)  # MSE = delta^2 exactly
        assert r.per_image.shape == (3,)
        assert r.mean == pytest.approx(10 * math.log10(4.0 / delta**2), rel=1e-9)
    assert psnr(x, x).mean == math.inf
    y = x + 0.05 * signs
    assert psnr((y + 1) / 2, (x + 1) / 2, data_range=1.0).mean == pytest.approx(psnr(y, x, data_range=2.0).mean, rel=1e-9)
    with pytest.raises(MetricError, match="wider than data_range=1"):
        psnr(x, x, data_range=1.0)


def test_pooled_psnr_stays_finite_when_some_pairs_are_identical() -> None:
    g = torch.Generator().manual_seed(9)
    x = torch.rand(4, 1, 8, 8, generator=g, dtype=torch.float64) * 1.6 - 0.8
    y = x.clone()
    y[:2] += 0.1  # pairs 0 and 1 off by 0.1 everywhere (MSE 0.01), pairs 2 and 3 identical
    r = psnr(y, x)
    assert r.mean == math.inf and torch.isinf(r.per_image[2:]).all()
    assert r.pooled == pytest.approx(10 * math.log10(4.0 / 0.005), rel=1e-9)  # mean MSE over all pixels: 0.005
    assert psnr(x, x).pooled == math.inf and ssim(y, x).pooled is None
    with pytest.raises(MetricError, match="same shape"):
        psnr(x, x[:2])


def _ssim_reference(x: np.ndarray, y: np.ndarray, win: int, sigma: float, L: float) -> float:
    """SSIM of one (C, H, W) pair by explicit loops over every window fully inside the image."""
    k = np.arange(win) - (win - 1) / 2
    g = np.exp(-(k**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - win + 1):
            for j in range(x.shape[2] - win + 1):
                a, b = x[c, i:i + win, j:j + win], y[c, i:i + win, j:j + win]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
                cov = (w * (a - ma) * (b - mb)).sum()
                vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


@pytest.mark.parametrize(("shape", "win"), [((2, 13, 12), 11), ((1, 8, 8), 7)])
def test_ssim_matches_reference_implementation(shape: tuple[int, int, int], win: int) -> None:
    g = torch.Generator().manual_seed(9)
    x = torch.rand(2, *shape, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    r = ssim(y, x, data_range=2.0)
    for i in range(2):
        assert float(r.per_image[i]) == pytest.approx(
            _ssim_reference(y[i].double().numpy(), x[i].double().numpy(), win, 1.5, 2.0), rel=1e-9)


def test_ssim_identical_is_one_and_decreases_with_noise() -> None:
    g = torch.Generator().manual_seed(10)
    x = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    assert ssim(x, x).mean == pytest.approx(1.0, abs=1e-12)
    noise = torch.randn(x.shape, generator=g)
    scores = [ssim((x + s * noise).clamp(-1, 1), x).mean for s in (0.05, 0.2, 0.6)]
    assert 1.0 > scores[0] > scores[1] > scores[2]
    assert "n=4" in str(ssim(x, x))


# ---------------------------------------------------------------------------------------------- feature net
@pytest.fixture(scope="module")
def digits() -> SimpleNamespace:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # 0..16 -> [-1, 1]
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1437], perm[1437:]
    return SimpleNamespace(x_train=x[tr], y_train=y[tr], x_test=x[te], y_test=y[te])


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mtd_cache")


@pytest.fixture(scope="module")
def digits_net(digits: SimpleNamespace, cache_root: Path) -> FeatureNetResult:
    return train_feature_net(digits.x_train, digits.y_train, test=(digits.x_test, digits.y_test),
                             recipe=DIGITS_RECIPE, cache_dir=cache_root)


def test_feature_net_reaches_documented_accuracy_and_is_cached(digits: SimpleNamespace, digits_net: FeatureNetResult,
                                                               cache_root: Path) -> None:
    assert not digits_net.from_cache
    assert digits_net.test_accuracy > 0.9
    assert digits_net.n_test == 360 and digits_net.info.feature_dim == 64
    again = train_feature_net(digits.x_train, digits.y_train, test=(digits.x_test, digits.y_test),
                              recipe=DIGITS_RECIPE, cache_dir=cache_root)
    assert again.from_cache and again.key == digits_net.key and again.test_accuracy == digits_net.test_accuracy
    assert torch.equal(features(again, digits.x_test), features(digits_net, digits.x_test))
    f = features(digits_net, digits.x_test)
    assert f.shape == (360, 64) and f.dtype == torch.float32
    # a different recipe is a different cache entry
    other = FeatureRecipe(epochs=1, seed=1)
    assert train_feature_net(digits.x_train[:200], digits.y_train[:200], test=(digits.x_test, digits.y_test),
                             recipe=other, cache_dir=cache_root).key != digits_net.key


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_feature_net_shapes(shape: tuple[int, int, int]) -> None:
    net = FeatureNet(shape[0], shape[1:], num_classes=7, width=8, feature_dim=16)
    x = torch.rand(5, *shape) * 2 - 1
    assert features(net, x, batch_size=2).shape == (5, 16)
    assert classify(net, x).shape == (5,) and int(classify(net, x).max()) < 7
    assert FeatureNet(**net.config()).config() == net.config()


def test_feature_net_training_is_deterministic(digits: SimpleNamespace) -> None:
    kw = {"test": (digits.x_test[:50], digits.y_test[:50]), "recipe": FeatureRecipe(epochs=1, width=8, seed=3),
          "use_cache": False}
    a = train_feature_net(digits.x_train[:300], digits.y_train[:300], **kw)
    b = train_feature_net(digits.x_train[:300], digits.y_train[:300], **kw)
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("damage", ["weights", "json", "missing_weights"])
def test_corrupt_cache_entry_is_retrained_with_a_warning(digits: SimpleNamespace, tmp_path: Path, damage: str) -> None:
    args = (digits.x_train[:200], digits.y_train[:200])
    kw = {"test": (digits.x_test[:50], digits.y_test[:50]), "recipe": FeatureRecipe(epochs=1, width=8),
          "cache_dir": tmp_path}
    first = train_feature_net(*args, **kw)
    st_path, json_path = tmp_path / "features" / f"{first.key}.safetensors", tmp_path / "features" / f"{first.key}.json"
    if damage == "weights":
        data = bytearray(st_path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        st_path.write_bytes(bytes(data))
    elif damage == "json":
        json_path.write_text("{not json")
    else:
        st_path.unlink()
    with pytest.warns(CacheWarning, match="corrupt features cache entry"):
        second = train_feature_net(*args, **kw)
    assert not second.from_cache and second.test_accuracy == first.test_accuracy
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert train_feature_net(*args, **kw).from_cache  # the entry was rewritten


def test_feature_net_rejects_bad_images(digits_net: FeatureNetResult, digits: SimpleNamespace) -> None:
    with pytest.raises(MetricError, match="size 8x8"):
        features(digits_net, torch.zeros(2, 1, 28, 28))
    with pytest.raises(MetricError, match=r"values in \[-1, 1\], got values in \[0, 16\]"):
        classify(digits_net, (digits.x_test[:4] + 1) * 8)
    with pytest.raises(MetricError, match="expected 1 channel"):
        features(digits_net, torch.zeros(2, 3, 8, 8))
    with pytest.raises(MetricError, match="expected 10 labels"):
        train_feature_net(digits.x_train[:10], digits.y_train[:9], test=(digits.x_test, digits.y_test))


def test_reference_features_are_cached(digits_net: FeatureNetResult, digits: SimpleNamespace, cache_root: Path) -> None:
    a = reference_features(digits_net, digits.x_test, cache_dir=cache_root)
    b = reference_features(digits_net, digits.x_test, cache_dir=cache_root)
    assert not a.from_cache and b.from_cache
    assert torch.equal(a.features, b.features) and torch.equal(a.stats.cov, b.stats.cov)
    # FID of the test split against the training split is small next to FID against blurred-out images
    train_feats = features(digits_net, digits.x_train)
    close = fid(train_feats, b, feature_net=digits_net)
    noisy = (digits.x_train + 0.8 * torch.randn(digits.x_train.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    far = fid(features(digits_net, noisy), b, feature_net=digits_net)
    assert far.value > 5 * close.value
    assert digits_net.info.name in str(close) and "test accuracy" in str(close)


# ---------------------------------------------------------------------------------------------- agreement
def test_classification_accuracy_confusion_matches_sklearn() -> None:
    from sklearn.metrics import confusion_matrix

    g = torch.Generator().manual_seed(11)
    t = torch.randint(0, 4, (50,), generator=g)
    p = torch.where(torch.rand(50, generator=g) < 0.7, t, torch.randint(0, 4, (50,), generator=g))
    r = classification_accuracy(p, t, num_classes=4)
    assert np.array_equal(r.confusion.numpy(), confusion_matrix(t.numpy(), p.numpy(), labels=range(4)))
    assert r.accuracy == pytest.approx(float((p == t).float().mean()))
    with pytest.raises(MetricError, match=r"class indices must lie in \[0, 3\], got values in \[0, 4\]"):
        classification_accuracy(torch.tensor([0, 4]), torch.tensor([0, 1]), num_classes=4)


def test_label_agreement_with_the_feature_net(digits_net: FeatureNetResult, digits: SimpleNamespace) -> None:
    right = conditional_fidelity(digits_net, digits.x_test, digits.y_test)
    assert right.accuracy == pytest.approx(digits_net.test_accuracy)
    assert right.chance == pytest.approx(0.1)
    wrong = joint_coherence(digits_net, digits.x_test, (digits.y_test + 1) % 10)
    assert wrong.accuracy < 0.1
    text = str(right)
    assert "n_generated=360" in text and digits_net.info.name in text
    with pytest.raises(MetricError, match="one generated image per label"):
        joint_coherence(digits_net, digits.x_test[:5], digits.y_test[:6])


def test_cosine_consistency() -> None:
    g = torch.Generator().manual_seed(12)
    v = torch.randn(20, 5, generator=g)
    assert cosine_consistency(v, 3 * v).mean == pytest.approx(1.0)
    assert cosine_consistency(v, -v).mean == pytest.approx(-1.0)
    e = torch.eye(2)
    assert cosine_consistency(e, e.flip(0)).mean == pytest.approx(0.0)
    with pytest.raises(MetricError, match="generated vector 1 is all zeros"):
        cosine_consistency(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), e)


# ---------------------------------------------------------------------------------------------- plugins and context
def _taskset(*mods: tuple[str, str, str]) -> SimpleNamespace:
    """A stand-in task set of built-in modalities: name, kind, role per modality (applies_to reads only these)."""
    from mtd_core.plugins.registry import get_registry

    build = get_registry().build_modality
    return SimpleNamespace(modalities={n: build({"kind": k, "name": n, "role": r}) for n, k, r in mods})


def test_builtin_metrics_are_registered_and_declare_what_they_apply_to(mtd_registry_builtin) -> None:  # noqa: ANN001
    names = set(mtd_registry_builtin.metric_names())
    assert {"fid", "kid", "precision_recall", "conditional_fidelity", "joint_coherence", "label_accuracy",
            "representation_consistency", "psnr", "ssim"} <= names
    image_label = _taskset(("image", "image", "base"), ("label", "label", "aggregated"))
    image_masked = _taskset(("image", "image", "base"), ("masked", "masked_image", "aggregated"))
    applies = {n: (mtd_registry_builtin.metric(n).applies_to(image_label),
                   mtd_registry_builtin.metric(n).applies_to(image_masked)) for n in names}
    assert applies["fid"] == (True, True)
    assert applies["joint_coherence"] == (True, False)
    assert applies["psnr"] == (False, True)
    assert applies["representation_consistency"] == (False, False)


def test_metrics_apply_to_a_real_taskset(mtd_registry_builtin) -> None:  # noqa: ANN001
    from mtd_core.taskset import TaskSet

    reg = mtd_registry_builtin
    taskset = TaskSet([reg.build_modality({"kind": "image", "role": "base"}), reg.build_modality({"kind": "label"})])
    applies = {n for n in reg.metric_names() if reg.metric(n).applies_to(taskset)}
    assert {"fid", "kid", "precision_recall", "conditional_fidelity", "joint_coherence", "label_accuracy"} <= applies
    assert not {"psnr", "ssim", "representation_consistency"} & applies
    ctx = EvalContext.from_taskset(taskset, generated={"image": torch.zeros(3, 1, 8, 8)})
    assert (ctx.kinds, ctx.base) == ({"image": "image", "label": "label"}, "image")


def test_run_metrics_on_a_joint_generation_context(digits_net: FeatureNetResult, digits: SimpleNamespace,
                                                   cache_root: Path) -> None:
    from mtd_plugins.metrics import builtin_metrics

    taskset = _taskset(("image", "image", "base"), ("label", "label", "aggregated"))
    # "generated" samples: real training digits with their labels (a perfect joint generator)
    ctx = EvalContext.from_taskset(taskset, generated={"image": digits.x_train[:400], "label": digits.y_train[:400]},
                                   real={"image": digits.x_test}, feature_net=digits_net, cache_dir=cache_root)
    metrics = builtin_metrics()
    metrics["kid"].n_subsets = 10  # type: ignore[attr-defined]
    out = run_metrics(metrics, ctx, taskset)
    assert set(out.reports) == {"fid", "kid", "precision_recall", "joint_coherence"}
    assert "conditional_fidelity" in out.skipped and "no label was given" in out.skipped["conditional_fidelity"]
    assert out.skipped["psnr"] == "does not apply to this task set"
    fid_report = out.reports["fid"]
    assert isinstance(fid_report, MetricReport)
    assert fid_report["fid"] == pytest.approx(fid(features(digits_net, digits.x_train[:400]),
                                                  features(digits_net, digits.x_test)).value, rel=1e-9)
    assert (fid_report.n_generated, fid_report.n_reference) == (400, 360)
    assert out.reports["joint_coherence"]["joint_coherence"] > 0.9
    assert "n_generated=400" in str(out) and "n_reference=360" in str(out)
    assert fid_report.to_dict()["feature_net"] == digits_net.info.name
    with pytest.raises(MetricError, match="no label was given"):
        metrics["conditional_fidelity"](ctx)


def test_restoration_and_classification_metrics_from_context() -> None:
    from mtd_plugins.metrics import builtin_metrics

    g = torch.Generator().manual_seed(13)
    clean = torch.rand(6, 1, 12, 12, generator=g) * 2 - 1
    restored = (clean + 0.1 * torch.randn(clean.shape, generator=g)).clamp(-1, 1)
    ctx = EvalContext(kinds={"image": "image", "masked": "masked_image", "label": "label"}, base="image",
                      given={"masked": clean * 0}, generated={"image": restored, "label": torch.tensor([0, 1, 2, 0, 1, 2])},
                      targets={"image": clean, "label": torch.tensor([0, 1, 2, 2, 1, 0])})
    m = builtin_metrics()
    assert m["psnr"](ctx)["psnr"] == pytest.approx(psnr(restored, clean).mean)
    assert m["ssim"](ctx)["ssim"] == pytest.approx(ssim(restored, clean).mean)
    assert m["label_accuracy"](ctx)["accuracy"] == pytest.approx(4 / 6)


def test_eval_context_validates_its_inputs() -> None:
    with pytest.raises(MetricError, match=r"'caption' is not a modality of the task set \['image', 'label'\]"):
        EvalContext(kinds={"image": "image", "label": "label"}, base="image", generated={"caption": torch.zeros(2)})
    with pytest.raises(MetricError, match=r"row-aligned.*\n.*generated\['image'\]: 4 rows\n.*given\['label'\]: 3 rows"):
        EvalContext(kinds={"image": "image", "label": "label"}, base="image",
                    generated={"image": torch.zeros(4, 1, 8, 8)}, given={"label": torch.zeros(3, dtype=torch.int64)})


class _MeanIntensity(Metric):
    """The third-party example of docs/metrics.md."""

    default_name = "mean_intensity"
    description = "absolute difference of mean pixel values, generated vs real base images"

    def applies_to(self, taskset) -> bool:  # noqa: ANN001
        return taskset.base is not None and taskset.base.kind == "image"

    def missing(self, ctx: EvalContext) -> list[str]:
        need = [f"{f}[{ctx.base!r}]" for f in ("generated", "real") if ctx.base not in getattr(ctx, f)]
        return [f"no {n}" for n in need]

    def compute(self, ctx: EvalContext) -> MetricReport:
        gen, real = ctx.generated[ctx.base], ctx.real[ctx.base]
        gap = float((gen.mean() - real.mean()).abs())
        return MetricReport(metric=self.name, scores={"gap": gap}, n_generated=len(gen), n_reference=len(real))


def test_a_third_party_metric_plugin_registers_and_runs(mtd_registry_builtin) -> None:  # noqa: ANN001
    import types

    from mtd_core.plugins import hookimpl
    from mtd_core.taskset import TaskSet

    plugin = types.ModuleType("mypkg_metrics")
    plugin.mtd_register_metrics = hookimpl(lambda: {"mean_intensity": _MeanIntensity()})  # type: ignore[attr-defined]
    reg = mtd_registry_builtin
    reg.register(plugin, name="mypkg-metrics")
    taskset = TaskSet([reg.build_modality({"kind": "image", "role": "base"}), reg.build_modality({"kind": "label"})])
    gen, real = torch.full((4, 1, 8, 8), 0.5), torch.zeros(6, 1, 8, 8)
    ctx = EvalContext.from_taskset(taskset, generated={"image": gen}, real={"image": real})
    out = run_metrics({n: reg.metric(n) for n in reg.metric_names()}, ctx, taskset)
    assert out.reports["mean_intensity"]["gap"] == pytest.approx(0.5)
    assert "fid" in out.skipped and "no feature network" in out.skipped["fid"]
    with pytest.raises(MetricError, match=r"metric 'mean_intensity' cannot run.*\n  - no real\['image'\]"):
        reg.metric("mean_intensity")(EvalContext.from_taskset(taskset, generated={"image": gen}))


# -- the noise-like share -------------------------------------------------------------------------------------
def test_total_variation_is_the_mean_absolute_neighbour_difference() -> None:
    x = torch.zeros(2, 1, 4, 4)
    x[1, 0, :, 2:] = 1.0  # one vertical edge of height 1 in four rows
    tv = total_variation(x)
    assert tv.tolist() == [0.0, pytest.approx(4 / 12)]  # 4 of the 12 horizontal pairs differ; no vertical one
    with pytest.raises(MetricError, match=r"at least 2x2 pixels"):
        total_variation(torch.zeros(2, 1, 1, 4))


def test_noise_like_share_counts_generated_images_rougher_than_the_reference_quantile() -> None:
    g = torch.Generator().manual_seed(0)
    smooth = torch.linspace(-1, 1, 8).repeat(8, 1)[None, None] * torch.rand(200, 1, 1, 1, generator=g)
    noise = torch.rand(50, 1, 8, 8, generator=g) * 2 - 1
    result = noise_like_share(torch.cat([0.5 * smooth[:150], noise]), smooth)  # half as rough as the real ones
    assert result.share == pytest.approx(50 / 200) and result.n_generated == 200 and result.n_reference == 200
    assert noise_like_share(smooth, smooth).share <= 0.01 + 1e-12  # real images score 1 - quantile at most
    assert "noise-like share 25.00%" in str(result)
    with pytest.raises(MetricError, match=r"at least 100 real images, got 50"):
        noise_like_share(noise, noise)
    with pytest.raises(MetricError, match=r"quantile must lie in \(0, 1\), got 1.0"):
        noise_like_share(noise, smooth, quantile=1.0)
