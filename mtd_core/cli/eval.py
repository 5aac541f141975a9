"""``mtd eval RUN_DIR [--n N] [--timesteps K] [--ema NAME] [--json]``: held-out ELBO (bits/dim) and every head's
read-out (of the default EMA's weights; ``--ema NAME`` another EMA of the run, ``--ema model`` the raw weights).

The ELBO is the bound of the base (prior + denoising + reconstruction, mtd_core/diffusion/elbo.py) in bits per
dimension of the base's data, with each aggregated modality's decoder term beside it in nats, on a seeded subsample
of the test split. Its sum
over the T - 1 denoising terms is estimated without bias from K timesteps per example, drawn systematically across
2..T with each example's own random offset (``stratified_timesteps``; K = T - 1 evaluates every term), so examples
are independent and the printed standard error covers both the examples and the timestep draws. Every aggregated
modality with a head is read off the real test images (``generate`` with the base given: the read-out mode) and
scored by its ``readout_scores`` (accuracy for labels and other integer data, mean squared error for float data,
or what the modality defines).
"""

from __future__ import annotations

import argparse
import json
import math
from typing import TYPE_CHECKING

import torch

from mtd_core.cli.common import check_device, check_seed, handle_errors
from mtd_core.cli.sample_args import add_ema_options, ema_choice, weights_text
from mtd_core.errors import ConfigError

if TYPE_CHECKING:
    from mtd_core.data.build import LoadedData
    from mtd_core.model import MultiTaskModel
    from mtd_core.types import ConfigDict


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mtd eval``."""
    p = subparsers.add_parser("eval", help="evaluate a trained run on its test split",
                              description="Held-out ELBO in bits/dim (on a test subsample, count printed) and the "
                                          "read-out of every aggregated modality's head on the test split.")
    p.add_argument("run", help="the run folder (or one checkpoint folder)")
    p.add_argument("--n", type=int, default=256, help="test examples for the ELBO (default 256; 0 = all)")
    p.add_argument("--timesteps", type=int, default=50,
                   help="denoising terms evaluated per example, stratified over 2..T (default 50; T - 1 = exact)")
    p.add_argument("--readout-n", "--accuracy-n", dest="readout_n", type=int, default=0,
                   help="test examples for the heads' read-out (default 0 = all)")
    p.add_argument("--batch-size", type=int, default=128, help="examples per forward pass (default 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsample, timesteps and noise, in 0..2**64 - 1 (default 0)")
    add_ema_options(p, "evaluate")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=main)


def _subsample(size: int, n: int, seed: int) -> torch.Tensor:
    if n <= 0 or n >= size:
        return torch.arange(size)
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def evaluate_elbo(model: MultiTaskModel, data: LoadedData, n: int, timesteps: int, batch_size: int, seed: int
                  ) -> ConfigDict:
    """The ELBO in bits/dim on ``n`` test examples (see the module docstring), with its terms in nats."""
    from mtd_core.data.derive import derive_batch, model_inputs
    from mtd_core.diffusion.elbo import MultiModalELBO, stratified_timesteps

    taskset = model.taskset
    fp = taskset.forward_process()
    K = min(max(1, timesteps), fp.T - 1) if fp.T > 1 else 0
    # a network told the known part: the bound of joint generation, which draws these first (docs/math.md, section 5)
    known = [m.name for m in taskset.aggregated if m.exact_sample] if taskset.known_input else []
    elbo = MultiModalELBO(fp, taskset.modalities, taskset.base_latent, model.encode, known=known)
    idx = _subsample(len(data.splits.test), n, seed)
    g = torch.Generator().manual_seed(seed)
    bpd, terms = [], {"prior": 0.0, "denoise": 0.0, "recon": 0.0}
    for start in range(0, len(idx), batch_size):
        chunk = idx[start:start + batch_size]
        batch = model_inputs(taskset, derive_batch(taskset, data.batch(data.splits.test, chunk), g))
        ts = stratified_timesteps(fp.T, K, len(chunk), g) if K else torch.zeros(0, dtype=torch.long)
        out = elbo(model, model.to_device(batch), timesteps=ts, generator=_device_gen(model, g))
        bpd.append(out.bpd.double().cpu())
        for k in ("prior", "denoise", "recon"):
            terms[k] += float(getattr(out, k).double().sum())
        for k, v in out.decode.items():
            terms[f"decode_{k}"] = terms.get(f"decode_{k}", 0.0) + float(v.double().sum())
    all_bpd = torch.cat(bpd)
    count = len(all_bpd)
    se = float(all_bpd.std(unbiased=True) / math.sqrt(count)) if count > 1 else float("nan")
    return {"bits_per_dim": float(all_bpd.mean()), "std_error": se, "n_examples": count,
            "timesteps_per_example": K, "T": fp.T, "exact": K == fp.T - 1,
            "terms_nats": {k: v / count for k, v in terms.items()}}


def _device_gen(model: MultiTaskModel, g: torch.Generator) -> torch.Generator:
    """A generator on the model's device, seeded from ``g`` (CUDA draws need a CUDA generator)."""
    dev = model.device
    if dev.type == "cpu":
        return g
    return torch.Generator(dev).manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))


def evaluate_readout(model: MultiTaskModel, data: LoadedData, n: int, batch_size: int, seed: int
                     ) -> dict[str, dict[str, float]]:
    """Every aggregated modality with a head, read off real test examples of the base and scored by its
    ``readout_scores``: modality name -> {score name: mean, ..., "n_examples": count}."""
    from mtd_core.data.derive import derive_batch, model_inputs
    from mtd_core.modality import HeadInput
    from mtd_core.sampling.generate import generate

    taskset = model.taskset
    base = taskset.base
    heads = [m for m in taskset.aggregated if m.head_input is not HeadInput.NONE]
    if base is None or not heads:
        return {}
    idx = _subsample(len(data.splits.test), n, seed)
    g = torch.Generator().manual_seed(seed)
    sums: dict[str, dict[str, float]] = {m.name: {} for m in heads}
    for start in range(0, len(idx), batch_size):
        raw = data.batch(data.splits.test, idx[start:start + batch_size])
        batch = model_inputs(taskset, derive_batch(taskset, raw, g))
        out = generate(model, given={base.name: batch[base.name].to(model.device)}, generator=_device_gen(model, g),
                       progress=False)
        for m in heads:
            for score, values in m.readout_scores(out.samples[m.name], batch[m.name].to(model.device)).items():
                sums[m.name][score] = sums[m.name].get(score, 0.0) + float(values.double().sum())
    return {name: {**{k: v / len(idx) for k, v in scores.items()}, "n_examples": len(idx)}
            for name, scores in sums.items()}


def format_score(value: float) -> str:
    """A read-out score as printed: the number ``--json`` holds, to 4 significant digits, a fraction as a fraction
    (accuracy 0.9861, never 98.61%): a score's name does not say whether it is a fraction, so none is turned into
    a percentage."""
    return f"{value:.4g}"


@handle_errors("eval")
def main(args: argparse.Namespace) -> int:
    """Run ``mtd eval``."""
    from mtd_core.training.run import load_run, load_run_data

    for option, value, low in (("--batch-size", args.batch_size, 1), ("--timesteps", args.timesteps, 1),
                               ("--n", args.n, 0), ("--readout-n", args.readout_n, 0)):
        if value < low:
            raise ConfigError(f"{option} must be at least {low}{' (0 = all)' if low == 0 else ''}, got {value}")
    check_seed(args.seed)
    check_device(args.device)
    loaded = load_run(args.run, ema=ema_choice(args), device=args.device)
    data = load_run_data(loaded)
    model = loaded.model
    with torch.no_grad():
        e = evaluate_elbo(model, data, args.n, args.timesteps, args.batch_size, args.seed)
    readout = evaluate_readout(model, data, args.readout_n, args.batch_size, args.seed)
    result = {"checkpoint": str(loaded.checkpoint.path), "step": loaded.step, "weights": loaded.weights,
              "test_size": len(data.splits.test), "elbo": e, "readout": readout}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    how = ("all denoising terms" if e["exact"]
           else f"{e['timesteps_per_example']} of {e['T'] - 1} denoising terms per example")
    print(f"mtd eval: {result['checkpoint']} ({weights_text(loaded.weights)} weights, step {result['step']})")
    print(f"  ELBO of the base (prior + denoise + recon): {e['bits_per_dim']:.4f} bits/dim (+- {e['std_error']:.4f} "
          f"s.e.) on {e['n_examples']} of {result['test_size']} test examples, {how}")
    print("  terms (nats/example): " + ", ".join(f"{k} {v:.2f}" for k, v in e["terms_nats"].items()
                                                 if not k.startswith("decode_")))
    decoders = {k[len("decode_"):]: v for k, v in e["terms_nats"].items() if k.startswith("decode_")}
    if decoders:
        print("  decoder terms, not in the bits/dim (nats/example): "
              + ", ".join(f"{k} {v:.2f}" for k, v in decoders.items()))
    base = model.taskset.base.name if model.taskset.base is not None else "base"
    for name, scores in readout.items():
        shown = ", ".join(f"{k} {format_score(v)}" for k, v in scores.items() if k != "n_examples")
        print(f"  {name} read-out from the test {base}s: {shown} on {scores['n_examples']} test examples")
    return 0
