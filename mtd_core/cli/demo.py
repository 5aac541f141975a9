"""``mtd demo [--out DIR] [--quick]``: train image + label on scikit-learn's digits on the CPU in a few minutes,
then show what one MT-Diffusion model does with them.

Writes into --out (default ``mtd-demo``):
    joint.png          images and labels generated together (the label written under each image)
    conditional.png    images generated for a requested label, one row per class (conditioned on the label and
                       guided by the model's own label head)
    report.md/.json    what was trained, steps, time, the label head's accuracy on held-out digits, and how well
                       the generated images match their labels according to an independent classifier
    run/               the training run (checkpoints, metrics.jsonl, config.json): use it with
                       ``mtd sample``, ``mtd eval`` or ``mtd train ... --resume``
The same model is trained by ``mtd train examples/configs/image_label.toml --out DIR``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, cast

import torch

from mtd_core.cli.common import check_at_least, check_out_dir, check_seed, handle_errors
from mtd_core.training.grids import GridCell

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

    from mtd_core.data.build import LoadedData
    from mtd_core.data.splits import ArrayDataset
    from mtd_core.model import MultiTaskModel
    from mtd_core.sampling.generate import GenerationOutput
    from mtd_core.training.run import Run
    from mtd_core.training.trainer import Trainer, TrainResult
    from mtd_core.types import ConfigDict

    class _Drawn(TypedDict):
        """What _draw generated and wrote."""

        joint: GenerationOutput
        plain: GenerationOutput
        cond: GenerationOutput
        requested: torch.Tensor
        joint_png: Path
        cond_png: Path
        sample_s: float

    class _Scores(TypedDict):
        """What _score measured."""

        head: dict[str, float]
        classifier_accuracy: float
        coherence: float
        fidelity: float
        fidelity_plain: float

# The demo's run config: small enough for ~3 minutes on 2 CPU cores, large enough for recognisable digits.
DEMO_CONFIG: ConfigDict = {
    "dataset": {"name": "digits", "seed": 0, "test_fraction": 0.2},
    "taskset": {
        "modalities": [
            {"kind": "image", "role": "base", "channels": 1, "size": 8},
            {"kind": "label", "num_classes": 10},  # the rest of the design from the kinds (docs/models.md)
        ],
        "diffusion": {"kind": "linear", "T": 1000},
    },
    "backbone": {"name": "unet", "channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
                 "attention_resolutions": [], "mid_attention": True, "groups": 8, "num_heads": 4},
    "trainer": {"steps": 1200, "batch_size": 64, "lr": 1e-3, "warmup_steps": 100, "lr_schedule": "cosine",
                "final_lr_fraction": 0.1, "grad_clip": 1.0, "ema_decay": 0.995, "seed": 0, "log_every": 50,
                "sample_every": 0, "sample_n": 0, "checkpoint_every": 400, "keep_last": 1, "device": "cpu"},
}

# --quick: the same pipeline in seconds (for tests and a first check); the images will not look like digits.
QUICK_CHANGES: dict[str, ConfigDict] = {
    "taskset": {"diffusion": {"kind": "linear", "T": 100}},
    "backbone": {"channels": 16, "groups": 8},
    "trainer": {"steps": 8, "batch_size": 16, "warmup_steps": 2, "checkpoint_every": 0, "log_every": 4},
}
QUICK_NFE = 4  # --quick samples with this many network evaluations; the full demo with generate()'s default
GUIDANCE_SCALE = 3.0  # the label-conditioned grid also follows the model's own label head (classifier guidance)
PER_CLASS, QUICK_PER_CLASS = 8, 2
JOINT_N, QUICK_JOINT_N = 64, 8


DEMO_SEED_MAX = 2**32 - 1  # the seed is also the independent classifier's random_state (scikit-learn: 32 bits)


def demo_config(quick: bool = False, steps: int | None = None, seed: int = 0) -> ConfigDict:
    """The demo's run config (a plain dict in the TOML layout)."""
    cfg = copy.deepcopy(DEMO_CONFIG)
    if quick:
        for table, changes in QUICK_CHANGES.items():
            cfg[table].update(copy.deepcopy(changes))
    if steps is not None:
        cfg["trainer"]["steps"] = steps
    cfg["trainer"]["seed"] = seed
    cfg["dataset"]["seed"] = seed
    return cfg


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mtd demo``."""
    p = subparsers.add_parser("demo", help="train image + label on the digits (CPU, a few minutes) and report",
                              description="Train an image + label MT-Diffusion model on scikit-learn's 8x8 digits on "
                                          "the CPU, then write jointly generated and label-conditioned samples, "
                                          "the label head's held-out accuracy, and a report.")
    p.add_argument("--out", default="mtd-demo", help="output folder (default: ./mtd-demo)")
    p.add_argument("--quick", action="store_true", help="a few training steps only (seconds; checks the pipeline)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 1200, --quick 8)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of data split, weights, noise and sampling, in 0..2**32 - 1 (default 0)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=main)


def _independent_classifier(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                            test_y: torch.Tensor, seed: int) -> tuple[LogisticRegression, float]:
    """A logistic regression on raw pixels (not part of the model) to judge generated images; its test accuracy."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000, random_state=seed)
    clf.fit(train_x.flatten(1).numpy(), train_y.numpy())
    return clf, float(clf.score(test_x.flatten(1).numpy(), test_y.numpy()))


@handle_errors("demo")
def main(args: argparse.Namespace) -> int:
    """Run ``mtd demo``."""
    check_seed(args.seed, high=DEMO_SEED_MAX, why=" (it also seeds the independent classifier, which takes 32 bits)")
    check_at_least("--threads", args.threads, 0, " (0 = all cores)")
    if args.steps is not None:
        check_at_least("--steps", args.steps, 1)
    check_out_dir(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = demo_config(args.quick, args.steps, args.seed)
    if args.no_progress:
        cfg["trainer"]["progress"] = False
    run_demo(cfg, Path(args.out), quick=args.quick, seed=args.seed, progress=not args.no_progress)
    return 0


def run_demo(cfg: ConfigDict, out: Path, *, quick: bool = False, seed: int = 0, progress: bool = True,
             verbose: bool = True) -> ConfigDict:
    """Train ``cfg`` (an image + label run config) into ``out/run``, write the grids and reports; the report dict."""
    from mtd_core.training.checkpoint import write_atomic

    t_start = time.perf_counter()
    run, trainer, result = _train(cfg, out / "run", quick, verbose)
    if result.status == "interrupted":  # Ctrl-C or SIGTERM: no report of a partly trained model (status 130)
        raise KeyboardInterrupt
    model = run.model
    if trainer.ema is not None:
        trainer.ema.copy_to(model)
    model.eval()
    drawn = _draw(model, run.data.info.get("class_names"), out, quick, seed, progress)
    scores = _score(model, run.data, drawn, seed)
    report = _report(run, trainer, result, drawn, scores, quick, time.perf_counter() - t_start)
    write_atomic(out / "report.json", json.dumps(report, indent=2))
    write_atomic(out / "report.md", _markdown(report))
    if verbose:
        _print_summary(report, out)
    return report


def _train(cfg: ConfigDict, run_dir: Path, quick: bool, verbose: bool) -> tuple[Run, Trainer, TrainResult]:
    """Train the demo's run from scratch in ``run_dir``: (run, trainer, train result)."""
    from mtd_core.training import RunConfig, Trainer, build_run

    if run_dir.exists() and any(run_dir.glob("checkpoints/step_*")):
        import shutil

        shutil.rmtree(run_dir)  # the demo always starts fresh; its folder holds only what it wrote
    run = build_run(RunConfig.from_dict(cfg))
    tc = run.config.trainer
    if verbose:
        n_params = sum(p.numel() for p in run.model.parameters())
        print(f"mtd demo: training image + label on the digits ({len(run.data.splits.train)} train / "
              f"{len(run.data.splits.test)} test, 8x8) for {tc.steps} steps on the CPU ({torch.get_num_threads()} "
              f"threads, {n_params / 1e6:.2f}M parameters)" + (" [--quick]" if quick else "") + " ...", flush=True)
    trainer = Trainer(run.model, run.data, tc, run_dir, run_config=run.config.to_dict())
    return run, trainer, trainer.fit()


def _draw(model: MultiTaskModel, names: list[str] | None, out: Path, quick: bool, seed: int, progress: bool
          ) -> _Drawn:
    """Joint samples, label-conditioned samples with and without guidance, and their two grids."""
    from mtd_core.sampling.generate import generate
    from mtd_core.sampling.guidance import GuidanceConfig
    from mtd_core.training.grids import render_grid, sample_cells, save_png

    nfe = QUICK_NFE if quick else None  # generate()'s default sampler and NFE otherwise
    per_class = QUICK_PER_CLASS if quick else PER_CLASS
    joint_n = QUICK_JOINT_N if quick else JOINT_N
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    joint = generate(model, n=joint_n, generator=g, progress=progress, nfe=nfe)
    joint_png = save_png(out / "joint.png", render_grid(
        sample_cells(model.taskset, joint.samples, names), ncols=min(8, joint_n), scale=5,
        title="generated together: image and label"))
    requested = torch.arange(10).repeat_interleave(per_class)
    plain = generate(model, given={"label": requested}, generator=g, progress=progress, nfe=nfe)
    guidance = GuidanceConfig("label", requested, GUIDANCE_SCALE)
    cond = generate(model, given={"label": requested}, guidance=guidance, generator=g, progress=progress, nfe=nfe)
    row_labels = [names[k] if names else str(k) for k in range(10)]
    cond_cells = [GridCell(images=c.images) for c in sample_cells(model.taskset, cond.samples, names)]
    cond_png = save_png(out / "conditional.png", render_grid(
        cond_cells, ncols=per_class, scale=5, row_labels=row_labels,
        title=f"generated for a requested label (guidance {GUIDANCE_SCALE:g})"))
    return {"joint": joint, "plain": plain, "cond": cond, "requested": requested, "joint_png": joint_png,
            "cond_png": cond_png, "sample_s": time.perf_counter() - t0}


def _score(model: MultiTaskModel, data: LoadedData, drawn: _Drawn, seed: int) -> _Scores:
    """The label head's read-out accuracy, and joint coherence and conditional fidelity by an independent classifier."""
    from mtd_core.cli.eval import evaluate_readout

    head = evaluate_readout(model, data, 0, 256, seed)["label"]
    # the digits: in-memory splits whose fields are all tensors
    train_fields = cast("dict[str, torch.Tensor]", cast("ArrayDataset", data.splits.train).fields)
    test_fields = cast("dict[str, torch.Tensor]", cast("ArrayDataset", data.splits.test).fields)
    clf, clf_acc = _independent_classifier(train_fields["image"], train_fields["label"], test_fields["image"],
                                           test_fields["label"], seed)

    def predicted(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(clf.predict(images.flatten(1).cpu().numpy()))

    joint = drawn["joint"].samples
    return {"head": head, "classifier_accuracy": clf_acc,
            "coherence": float((predicted(joint["image"]) == joint["label"].cpu()).float().mean()),
            "fidelity": float((predicted(drawn["cond"].samples["image"]) == drawn["requested"]).float().mean()),
            "fidelity_plain": float((predicted(drawn["plain"].samples["image"]) == drawn["requested"]).float().mean())}


def _report(run: Run, trainer: Trainer, result: TrainResult, drawn: _Drawn, scores: _Scores, quick: bool,
            total_s: float) -> ConfigDict:
    """The report.json dict: what was trained, the timings, the scores and what each means, the files."""
    from mtd_core.sampling.options import DEFAULT_SAMPLER

    tc, head, n_req = run.config.trainer, scores["head"], len(drawn["requested"])
    return {
        "trained": {"dataset": "digits (sklearn.datasets.load_digits, 8x8, 10 classes)",
                    "train_examples": len(run.data.splits.train), "test_examples": len(run.data.splits.test),
                    "modalities": [f"{m.name} ({m.kind}, {m.role.value})"
                                   for m in run.model.taskset.modalities.values()],
                    "parameters": sum(p.numel() for p in run.model.parameters()), "steps": result.step,
                    "batch_size": tc.batch_size, "final_loss": result.metrics.get("loss"), "quick": bool(quick)},
        "time_s": {"training": round(result.elapsed_s, 1), "sampling": round(drawn["sample_s"], 1),
                   "total": round(total_s, 1)},
        "machine": {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__},
        "label_head_accuracy": {"value": head["accuracy"], "n_test": head["n_examples"],
                                "what": "the model's label head reading real held-out digits (read-out at small t)"},
        "joint_coherence": {"value": scores["coherence"], "n": len(drawn["joint"].samples["label"]),
                            "what": "share of jointly generated (image, label) pairs whose image an independent "
                                    "pixel logistic regression assigns to the generated label"},
        "conditional_fidelity": {"value": scores["fidelity"], "n": n_req, "guidance_scale": GUIDANCE_SCALE,
                                 "what": "share of label-conditioned images (conditioned on the label and guided by "
                                         "the model's own label head, as in conditional.png) the same classifier "
                                         "assigns to the requested label"},
        "conditional_fidelity_unguided": {"value": scores["fidelity_plain"], "n": n_req,
                                          "what": "the same without the head's guidance (generate()'s defaults: "
                                                  "classifier-free guidance at 1.5 on this task set)"},
        "independent_classifier_test_accuracy": scores["classifier_accuracy"],
        "files": {"joint": str(drawn["joint_png"]), "conditional": str(drawn["cond_png"]),
                  "run": str(trainer.out_dir), "checkpoint": str(result.checkpoint)},
        "sampler": {"kind": DEFAULT_SAMPLER, "nfe": drawn["joint"].nfe,
                    "weights": "ema" if trainer.ema is not None else "model"},
        "config": run.config.to_dict(),
    }


def _print_summary(r: ConfigDict, out: Path) -> None:
    run_dir = r["files"]["run"]
    fid = r["conditional_fidelity"]
    print(f"mtd demo: done in {r['time_s']['total']:.0f} s (training {r['time_s']['training']:.0f} s).\n"
          f"  label head accuracy on {r['label_head_accuracy']['n_test']} held-out digits: "
          f"{r['label_head_accuracy']['value']:.1%}\n"
          f"  joint coherence (independent classifier agrees with the generated label): "
          f"{r['joint_coherence']['value']:.1%} of {r['joint_coherence']['n']}\n"
          f"  conditional fidelity (classifier recognises the requested label): {fid['value']:.1%} of "
          f"{fid['n']} with the head's guidance {GUIDANCE_SCALE:g} ({r['conditional_fidelity_unguided']['value']:.1%} "
          "without it)\n"
          f"  jointly generated images + labels: {r['files']['joint']}\n"
          f"  label-conditioned images (one row per class): {r['files']['conditional']}\n"
          f"  report: {out / 'report.md'} (and report.json); training run: {run_dir}\n"
          f"Next: mtd sample {run_dir} --given label=3 --out {out / 'threes'}   |   mtd eval {run_dir}")


def _markdown(r: ConfigDict) -> str:
    t, tm = r["trained"], r["time_s"]
    def pct(v: float) -> str:
        return f"{100 * v:.1f}%"
    return "\n".join([
        "# mtd demo report",
        "",
        f"Trained one MT-Diffusion model on {t['dataset']}: {', '.join(t['modalities'])}; "
        f"{t['parameters'] / 1e6:.2f}M parameters, {t['steps']} steps of batch {t['batch_size']} "
        f"on {t['train_examples']} training digits" + (" (--quick: a pipeline check, not a trained model)" if t["quick"] else "") + ".",
        "",
        "| what | value |",
        "| --- | --- |",
        f"| training time | {tm['training']} s ({r['machine']['threads']} CPU threads) |",
        f"| sampling time | {tm['sampling']} s ({r['sampler']['kind']}, {r['sampler']['nfe']} network evaluations, "
        f"{r['sampler']['weights']} weights) |",
        f"| total time | {tm['total']} s |",
        f"| final training loss | {t['final_loss']:.4f} |" if t["final_loss"] is not None else "| final training loss | - |",
        f"| label head accuracy | {pct(r['label_head_accuracy']['value'])} on {r['label_head_accuracy']['n_test']} "
        "held-out digits |",
        f"| joint coherence | {pct(r['joint_coherence']['value'])} of {r['joint_coherence']['n']} joint samples |",
        f"| conditional fidelity | {pct(r['conditional_fidelity']['value'])} of {r['conditional_fidelity']['n']} "
        f"label-conditioned samples (guidance scale {r['conditional_fidelity']['guidance_scale']:g}) |",
        f"| conditional fidelity without the head's guidance | {pct(r['conditional_fidelity_unguided']['value'])} of "
        f"{r['conditional_fidelity_unguided']['n']} |",
        f"| independent classifier's test accuracy | {pct(r['independent_classifier_test_accuracy'])} |",
        "",
        "- **Label head accuracy**: " + r["label_head_accuracy"]["what"] + ".",
        "- **Joint coherence**: " + r["joint_coherence"]["what"] + ".",
        "- **Conditional fidelity**: " + r["conditional_fidelity"]["what"] + ". Guidance adds "
        "-scale * sqrt(1 - abar_t) * grad log p(label | z_t) from the model's own label head to each step's noise "
        "prediction (no separate classifier), on top of generate()'s default classifier-free guidance "
        "(docs/sampling.md, \"Conditional generation\").",
        "",
        f"![jointly generated]({Path(r['files']['joint']).name})",
        "",
        f"![label-conditioned]({Path(r['files']['conditional']).name})",
        "",
        f"The training run is in `{r['files']['run']}`: `mtd sample {r['files']['run']} --given label=3 --out DIR`, "
        f"`mtd eval {r['files']['run']}`.",
        "",
    ])
