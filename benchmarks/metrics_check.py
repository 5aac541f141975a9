"""Sanity numbers for the metrics on scikit-learn's digits (no download): run, read, compare.

    OMP_NUM_THREADS=1 python benchmarks/metrics_check.py [--epochs 20] [--cache-dir DIR]

Trains the feature network (or reads it from the cache), then prints FID, KID, precision and recall of
degraded copies of the training split against the test split: Gaussian noise of growing strength, half the
classes dropped, and the training split subsampled to show FID's bias in the sample count. Also prints the
time each metric takes. The numbers are for judging the metrics, not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import time

import torch

from mtd_core.metrics import FeatureRecipe, features, fid, kid, precision_recall, reference_features, train_feature_net


def load_digits_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits as (x_train, y_train, x_test, y_test): 8x8 images scaled to [-1, 1], an 80/20 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(y))
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=FeatureRecipe().epochs, help="feature-net training epochs")
    parser.add_argument("--cache-dir", default=None, help="cache root (default $MTD_CACHE_DIR or ~/.cache/mtd)")
    args = parser.parse_args()
    torch.manual_seed(0)
    x_tr, y_tr, x_te, y_te = load_digits_split()
    net = train_feature_net(x_tr, y_tr, test=(x_te, y_te), recipe=FeatureRecipe(epochs=args.epochs),
                            cache_dir=args.cache_dir)
    print(f"feature net: {net}")
    ref = reference_features(net, x_te, cache_dir=args.cache_dir)
    gen = torch.Generator().manual_seed(1)
    cases = {"train split": x_tr}
    for s in (0.1, 0.3, 0.6, 1.0):
        cases[f"noise sigma={s}"] = (x_tr + s * torch.randn(x_tr.shape, generator=gen)).clamp(-1, 1)
    cases["classes 0-4 only"] = x_tr[y_tr < 5]
    for n in (100, 300):
        cases[f"train, n={n}"] = x_tr[:n]
    print(f"{'generated set':<20}{'n':>6}{'FID':>10}{'KID':>10}{'prec':>7}{'recall':>7}")
    times = {"fid": 0.0, "kid": 0.0, "pr": 0.0}
    for name, images in cases.items():
        f = features(net, images)
        t0 = time.perf_counter()
        r_fid = fid(f, ref, feature_net=net)
        t1 = time.perf_counter()
        r_kid = kid(f, ref, feature_net=net, subset_size=min(100, f.shape[0]))
        t2 = time.perf_counter()
        r_pr = precision_recall(f, ref, feature_net=net)
        t3 = time.perf_counter()
        times["fid"] += t1 - t0
        times["kid"] += t2 - t1
        times["pr"] += t3 - t2
        print(f"{name:<20}{f.shape[0]:>6}{r_fid.value:>10.3f}{r_kid.mean:>10.4f}{r_pr.precision:>7.3f}{r_pr.recall:>7.3f}")
    print(f"reference: n={ref.n} test images; total seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
