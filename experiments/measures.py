"""What the experiments measure on samples: the distribution metrics in seeded draws with the FID curve and its
extrapolation to infinitely many samples, conditional fidelity and the encodings' spread, the ELBO, paired image
scores and the learning curve."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from experiments.evaluation import Evaluator, generate_batched, split_view
from experiments.presets import Preset
from experiments.runs import device_of

DRAWN_KEYS = ("fid", "kid_mean", "kid_std", "precision", "recall", "noise_like")
"""The distribution metrics scored on every draw (the result's ``draws``; ``metrics`` holds their mean)."""
DISTRIBUTION_KEYS = [*DRAWN_KEYS, "n_generated", "n_draws", "feature_net_test_accuracy"]
"""What :func:`distribution_metrics` reports (``n_generated``: samples per draw)."""


@attrs.frozen
class Distribution:
    """The distribution metrics of a pooled sample set.

    Attributes:
        metrics: the mean over the draws of every DRAWN_KEYS metric (with the prefix), samples per draw
            (``n_generated``), ``n_draws`` and the feature net's test accuracy.
        draws: metric name -> its value on each draw, in draw order.
        fid_curve: {"n": [N...], "fid": [FID of the first N pooled samples...], "fid_inf": the extrapolation}.
    """

    metrics: dict[str, float]
    draws: dict[str, list[float]]
    fid_curve: dict[str, Any]


def fid_infinity(ns: Sequence[float], fids: Sequence[float]) -> float | None:
    """FID at infinitely many samples, after Chong & Forsyth ("Effectively Unbiased FID", CVPR 2020): FID_N is
    linear in 1/N, so the least-squares line FID_N = FID_inf + k / N through the points (1/N, FID_N) meets 1/N = 0
    at FID_inf. None with fewer than two distinct N."""
    if len(ns) != len(fids):
        raise ValueError(f"fid_infinity: {len(ns)} sample counts but {len(fids)} FIDs")
    xs = [1.0 / float(n) for n in ns]
    if len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(fids) / len(fids)
    k = sum((x - mx) * (y - my) for x, y in zip(xs, fids)) / sum((x - mx) ** 2 for x in xs)
    return float(my - k * mx)


def fid_curve(ev: Evaluator, feats: torch.Tensor, ns: Sequence[int]) -> dict[str, Any]:
    """FID of the first N of the pooled samples' features for every N in ``ns`` not above their count, and
    :func:`fid_infinity` of those points."""
    from mtd_core.metrics import fid

    use = [int(n) for n in ns if n <= len(feats)]
    values = [float(fid(feats[:n], ev.reference, feature_net=ev.feature_net).value) for n in use]
    return {"n": use, "fid": values, "fid_inf": fid_infinity(use, values)}


def draw_metrics(ev: Evaluator, images: torch.Tensor, feats: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """Classifier-FID, KID and precision/recall of one draw's generated images (and their features) against the
    real images of the evaluation split, and the noise-like share (docs/metrics.md)."""
    from mtd_core.metrics import fid, kid, noise_like_share, precision_recall

    r_fid = fid(feats, ev.reference, feature_net=ev.feature_net)
    r_kid = kid(feats, ev.reference, feature_net=ev.feature_net)
    r_pr = precision_recall(feats, ev.reference, feature_net=ev.feature_net)
    r_noise = noise_like_share(images, ev.real["image"])
    for r in (r_fid, r_kid, r_pr, r_noise):
        print(f"  {prefix}{r}")
    return {f"{prefix}fid": r_fid.value, f"{prefix}kid_mean": r_kid.mean, f"{prefix}kid_std": r_kid.std,
            f"{prefix}precision": r_pr.precision, f"{prefix}recall": r_pr.recall,
            f"{prefix}noise_like": r_noise.share}


def distribution_metrics(ev: Evaluator, preset: Preset, images: torch.Tensor, prefix: str = "") -> Distribution:
    """The distribution metrics of ``images``, the pooled ``preset.n_draws`` draws of :func:`experiments.evaluation.
    drawn`: each draw scored alone (``draws``), their mean (``metrics``, under the DRAWN_KEYS names with ``prefix``)
    and the FID curve of the pool (``preset.fid_curve_n``)."""
    from mtd_core.metrics import features

    feats = features(ev.feature_net, images)
    m = len(images) // preset.n_draws
    per = [draw_metrics(ev, images[k * m:(k + 1) * m], feats[k * m:(k + 1) * m], prefix)
           for k in range(preset.n_draws)]
    draws = {key: [float(p[key]) for p in per] for key in per[0]}
    metrics = {key: sum(v) / len(v) for key, v in draws.items()}
    metrics.update({f"{prefix}n_generated": float(m), f"{prefix}n_draws": float(preset.n_draws),
                    "feature_net_test_accuracy": float(ev.feature_net.test_accuracy)})
    curve = fid_curve(ev, feats, preset.fid_curve_n)
    if preset.n_draws > 1:
        print(f"  {prefix}mean of {preset.n_draws} draws of {m}: FID {metrics[f'{prefix}fid']:.4f}; pooled FID curve "
              f"{dict(zip(curve['n'], curve['fid']))}, extrapolated {curve['fid_inf']}")
    return Distribution(metrics=metrics, draws=draws, fid_curve=curve)


def conditional_measures(ev: Evaluator, preset: Preset, model: Any, given: Mapping[str, Any],
                         classes: torch.Tensor, seed: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Generate one image for each example of ``given`` and score whether it follows what it was given: the share
    that the feature net puts in ``classes`` (each example's class: the requested label, or the class of the real
    image whose caption or representation was given; ``conditional_fidelity``), the noise-like share
    (``conditional_noise_like``) and, for one given modality, :func:`encoding_measures`. Returns the metrics and the
    samples."""
    from mtd_core.metrics import conditional_fidelity, noise_like_share

    cond = generate_batched(model, preset, given=given, seed=seed)
    cf = conditional_fidelity(ev.feature_net, cond["image"], classes)
    noise = noise_like_share(cond["image"], ev.real["image"])
    print(f"  given {', '.join(given)}: {cf}; {noise}")
    out = {"conditional_fidelity": cf.accuracy, "conditional_noise_like": noise.share}
    if len(given) == 1:
        out.update(encoding_measures(model, given, classes))
    return out, cond


CONDITIONAL_KEYS = ["conditional_fidelity", "conditional_noise_like", "encoding_spread", "encoding_class_share"]
"""What :func:`conditional_measures` reports for one given modality."""


def encoding_measures(model: Any, given: Mapping[str, Any], classes: torch.Tensor) -> dict[str, float]:
    """How far the scaled encodings of one aggregated modality's values ``given`` (a tensor) tell examples apart: their
    RMS spread about their mean (``encoding_spread``; near 0 for an encoder that maps every example to one vector) and
    the share of that spread between the ``classes`` (``encoding_class_share``), as the model encodes them when it
    samples (experiments/notes/captions-and-representations.md)."""
    (name, values), = given.items()
    with torch.no_grad():
        e = model.encode_some({name: values}, [name])[1][name]
    e = e[:, -model.taskset.encoding_latent.shape[0]:].flatten(1).double()  # its own channels (zeros elsewhere)
    y = classes.to(e.device)
    centred = e - e.mean(0)
    total = centred.pow(2).sum(1).mean()
    between = sum(centred[y == c].mean(0).pow(2).sum() * (y == c).sum() for c in y.unique()) / len(y)
    out = {"encoding_spread": float((total / e.shape[1]).sqrt()), "encoding_class_share": float(between / total)}
    print(f"  encodings of the given {name}: spread {out['encoding_spread']:.4f}, "
          f"{out['encoding_class_share']:.1%} of it between classes")
    return out




def elbo_bits_per_dim(model: Any, data: Any, preset: Preset, seed: int, split: str = "test") -> dict[str, float]:
    """The bound of the base in bits/dim (prior + denoising + reconstruction) on a seeded subsample of ``split``
    (``preset.elbo_n`` examples), and each aggregated modality's decoder term apart (``elbo_decode_<name>_nats``)."""
    from mtd_core.cli.eval import evaluate_elbo

    with torch.no_grad():
        e = evaluate_elbo(model, split_view(data, split), preset.elbo_n, preset.elbo_timesteps, preset.elbo_batch,
                          seed)
    print(f"  ELBO of the base {e['bits_per_dim']:.4f} bits/dim (+- {e['std_error']:.4f}) on {e['n_examples']} {split} "
          f"examples, {e['timesteps_per_example']} of {e['T'] - 1} denoising terms per example")
    out = {"elbo_bpd": e["bits_per_dim"], "elbo_bpd_se": e["std_error"], "elbo_n": float(e["n_examples"]),
           "elbo_timesteps": float(e["timesteps_per_example"]), "elbo_batch": float(preset.elbo_batch)}
    out.update({f"elbo_{k}_nats": v for k, v in e["terms_nats"].items() if k.startswith("decode_")})
    return out


ELBO_KEYS = ["elbo_bpd", "elbo_bpd_se", "elbo_n"]


def paired_metrics(generated: torch.Tensor, target: torch.Tensor, name: str, suffix: str = "", *,
                   pooled: bool = False) -> dict[str, float]:
    """PSNR (dB; the mean over pairs, or with ``pooled`` the PSNR of the MSE over all pairs) and mean SSIM of
    generated vs target images in [-1, 1] (data range 2), as ``{name}_psnr{suffix}``, ``{name}_ssim{suffix}`` and the
    pair count ``{name}_n{suffix}``."""
    from mtd_core.metrics import psnr, ssim

    p, s = psnr(generated, target), ssim(generated, target)
    return {f"{name}_psnr{suffix}": float(p.pooled if pooled else p.mean), f"{name}_ssim{suffix}": float(s.mean),
            f"{name}_n{suffix}": float(len(target))}


def learning_curve(run_dir: Path, preset: Preset, ev: Evaluator, seed: int) -> list[dict[str, float]]:
    """FID (at ``preset.n_curve`` samples, EMA weights, the preset's sampler) of every checkpoint of a run, oldest
    first, every point from the same seed."""
    from mtd_core.metrics import features, fid
    from mtd_core.training import list_checkpoints, load_run

    points = []
    for ckpt in list_checkpoints(run_dir / "checkpoints"):
        loaded = load_run(ckpt, device=device_of(preset))
        base = loaded.model.taskset.base.name
        samples = generate_batched(loaded.model, preset, n=preset.n_curve, seed=seed)
        value = fid(features(ev.feature_net, samples[base]), ev.reference, feature_net=ev.feature_net).value
        print(f"  curve: step {loaded.step}: FID {value:.3f} (n_generated={preset.n_curve})")
        points.append({"step": float(loaded.step), "n_generated": float(preset.n_curve), "fid": float(value)})
    return points


CURVE_KEYS = ["final_curve_fid"]


def curve_metrics(curve: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The last learning-curve point's FID, as ``final_curve_fid``."""
    return {"final_curve_fid": curve[-1]["fid"]}

