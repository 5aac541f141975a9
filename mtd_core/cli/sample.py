"""``mtd sample RUN_DIR --out DIR [--given name=value ...] [--n N] [--sampler NAME --nfe N] [--seed S]``.

Draws samples from a trained run (EMA weights of its latest checkpoint; ``--ema NAME`` another EMA of the run,
``--ema model`` the raw weights) and writes ``samples.png`` (a captioned
grid) and ``samples.npz`` (every modality's raw samples; values that read as text, such as captions and class
names, also as strings) into --out.

``--given NAME=VALUE`` is read by the modality's ``parse`` (docs/plugins.md); by default:
    class indices   an index or class name; several comma-separated values give one grid row per value
                    (``--given label=0,1,2`` with ``--n 8``: 8 samples of each)
    text            a caption (quote it)
    image-like      a PNG file (converted to the modality's channels, same size) or a .npy file of shape (C, H, W);
                    giving the base image reads the other modalities off it (classification)
    vectors         numbers separated by commas or spaces (``--given attributes=0,1,1,0``)
    anything        a .npy file holding one example, or a batch (each example a grid row of ``--n``)
``--inpaint IMAGE --mask MASK`` generates the base around the known part of IMAGE (read as ``--given`` reads the base),
MASK marking what is generated: a PNG (pixels of 128 and above) or a .npy file of bools or 0/1 values, shaped like
the image or like one of its channels; ``--n`` inpaintings of the one image (any model with a base, a single-task
one included; docs/sampling.md, "Restoration: keeping the observed pixels").
``--guidance S`` steers towards the one given aggregated modality with its own head (any modality, not only labels),
or with the head of ``--classifier RUN``, a noise-aware classifier of the base (scale 1 unless --guidance says).
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from mtd_core.cli.common import check_device, check_out_dir, check_seed, handle_errors
from mtd_core.cli.sample_args import (  # noqa: F401  # parse_given and parse_value are imported from here too
    add_ema_options,
    ema_choice,
    parse_given,
    parse_inpaint,
    parse_options,
    parse_temperatures,
    parse_value,
    weights_text,
)
from mtd_core.diffusion.noise import RESPACINGS
from mtd_core.errors import ConfigError
from mtd_core.modality import Role
from mtd_core.sampling.estimate import CLIPS, EPS_RULES
from mtd_core.sampling.denoiser import CONDITIONING
from mtd_core.sampling.options import (
    DEFAULT_CFG_SCALE,
    DEFAULT_CLIP,
    DEFAULT_CLIP_EPS,
    DEFAULT_JOINT,
    DEFAULT_SAMPLER,
    DEFAULT_SPACING,
    DEFAULT_STEPS,
    JOINT,
)

if TYPE_CHECKING:
    from mtd_core.model import MultiTaskModel
    from mtd_core.sampling.generate import GenerationOutput
    from mtd_core.sampling.guidance import GuidanceConfig
    from mtd_core.taskset import TaskSet
    from mtd_core.types import Batch


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mtd sample``."""
    p = subparsers.add_parser("sample", help="draw samples from a trained run",
                              description="Draw joint or conditional samples from a trained run and write a PNG "
                                          "grid and the raw samples (.npz).")
    p.add_argument("run", help="the run folder (or one checkpoint folder)")
    p.add_argument("--out", required=True, help="folder for samples.png and samples.npz")
    p.add_argument("--given", action="append", default=[], metavar="NAME=VALUE",
                   help="condition on a modality (repeatable, once per modality), e.g. --given label=3 or "
                        "--given label=0,1,2")
    p.add_argument("--n", type=int, default=16, help="samples (per given value when a list is given); default 16")
    _add_sampler_options(p)
    _add_conditioning_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw, in 0..2**64 - 1 (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_ema_options(p, "sample with")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.set_defaults(func=main)


def _add_sampler_options(p: argparse.ArgumentParser) -> None:
    """The sampler, its budget and spacing, and the base estimate of every step."""
    p.add_argument("--sampler", default=DEFAULT_SAMPLER,
                   help=f"a registered sampler: ddim, ddpm, heun, dpmpp_2m, dpmpp_2m_sde or a plugin's "
                        f"(default {DEFAULT_SAMPLER})")
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=int, default=None,
                       help=f"sampler steps (default: as many as a budget of {DEFAULT_STEPS} network evaluations "
                            "allows, a committed label's draw and both passes of classifier-free guidance counted)")
    steps.add_argument("--nfe", type=int, default=None,
                       help=f"network evaluations per sample instead of --steps (default {DEFAULT_STEPS}; every one "
                            "counts: Heun takes two per step, classifier-free guidance twice that, a committed "
                            "label's draw one)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise level (default 0: deterministic)")
    p.add_argument("--spacing", choices=RESPACINGS, default=DEFAULT_SPACING,
                   help=f"where the sampler steps fall (default {DEFAULT_SPACING}; see docs/sampling.md)")
    p.add_argument("--clip", choices=CLIPS, default=None,
                   help=f"the base estimate of every step: none, static (clipped to the data range) or dynamic "
                        f"(Imagen's thresholding); default {DEFAULT_CLIP} where the base has a data range")
    p.add_argument("--clip-eps", choices=EPS_RULES, default=DEFAULT_CLIP_EPS,
                   help=f"re-derive the step's noise from the clipped estimate, or keep the network's (default "
                        f"{DEFAULT_CLIP_EPS})")
    p.add_argument("--clip-percentile", type=float, default=0.995, help="dynamic thresholding's quantile")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a further option of the sampler (repeatable), e.g. --option lower_order_final=false")


def _add_conditioning_options(p: argparse.ArgumentParser) -> None:
    """Guidance, conditioning, joint generation, restoration and inpainting, encoding temperatures."""
    p.add_argument("--guidance", type=float, default=None, metavar="SCALE",
                   help="also steer towards the given modality's value with that modality's own head, or with "
                        "--classifier's (classifier guidance at this scale; default 0, or 1 with --classifier)")
    p.add_argument("--classifier", default=None, metavar="RUN",
                   help="a run trained as a noise-aware classifier of the base (its label at weights zero; "
                        "examples/configs/label_classifier.toml) whose head guides instead of the model's own")
    p.add_argument("--cfg-scale", type=float, default=None, metavar="W",
                   help="classifier-free guidance towards the given modalities on a model told them (known_input): "
                        "eps_untold + W (eps_told - eps_untold), two network evaluations a step; default: the given "
                        f"kinds' own scale ({DEFAULT_CFG_SCALE:g} for the built-ins) where the given encodings have "
                        "channels of their own (aux_channels), else 1 (off)")
    p.add_argument("--joint", choices=JOINT, default=DEFAULT_JOINT,
                   help=f"commit: draw a label from its head first, then the rest given it; flow: generate it along "
                        f"(default {DEFAULT_JOINT})")
    p.add_argument("--conditioning", choices=CONDITIONING, default="replace",
                   help="how given modalities enter each step (default replace; see docs/sampling.md)")
    p.add_argument("--no-keep-observed", action="store_true",
                   help="regenerate every pixel of the base, those a given masked image shows included (default: "
                        "keep them in every step's estimate, so a restoration keeps what it was given)")
    p.add_argument("--inpaint", default=None, metavar="IMAGE",
                   help="inpaint this image of the base (a PNG or .npy file): generate what --mask marks, keep the "
                        "rest in every step (any model with a base)")
    p.add_argument("--mask", default=None, metavar="MASK",
                   help="with --inpaint: what is generated, a PNG (pixels of 128 and above) or a .npy file of bools "
                        "or 0/1 values shaped like the image or like one of its channels")
    p.add_argument("--encoding-temperature", action="append", default=[], metavar="NAME=TAU",
                   help="temper a generated label's (or caption's) probabilities behind its encoding in every "
                        "step (repeatable), e.g. --encoding-temperature label=0.125; default: the kind's own "
                        "(1, the posterior mean, but for text; see docs/sampling.md)")


def to_npz_arrays(taskset: TaskSet, samples: Batch) -> dict[str, np.ndarray]:
    """Raw samples as numpy arrays; integer-valued modalities whose examples ``describe`` as text (captions, class
    names) also as strings under ``<name>_text``."""
    out: dict[str, np.ndarray] = {}
    for name, v in samples.items():
        m = taskset.modalities[name]
        if isinstance(v, torch.Tensor):
            out[name] = v.detach().cpu().numpy()
            texts = [m.describe(row) for row in v.cpu()] if not v.is_floating_point() else []
            if texts and all(t is not None for t in texts):
                out[f"{name}_text"] = np.array(texts, dtype=str)
        else:
            out[name] = np.array([str(x) for x in v], dtype=str)
    return out


def _guidance(model: MultiTaskModel, given: Batch, args: argparse.Namespace) -> GuidanceConfig | None:
    """``--guidance``/``--classifier`` as generate()'s classifier guidance (None when neither is given)."""
    from mtd_core.sampling.guidance import GuidanceConfig, head_classifier
    from mtd_core.training.run import load_run

    scale = args.guidance if args.guidance is not None else (1.0 if args.classifier else 0.0)
    if not (scale or args.classifier):
        return None
    option = "--classifier" if args.classifier else "--guidance"
    heads = [k for k, m in model.taskset.modalities.items() if k in given and m.role is Role.AGGREGATED]
    if len(heads) != 1:
        raise ConfigError(f"{option} needs exactly one given aggregated modality (e.g. --given label=3): its "
                          f"head steers towards the given value; given {sorted(given)}")
    classifier = None
    if args.classifier:
        clf = load_run(args.classifier, ema=ema_choice(args) not in (False, "model"), device=args.device).model
        classifier = head_classifier(clf, heads[0], model)
    return GuidanceConfig(modality=heads[0], target=given[heads[0]], scale=scale, classifier=classifier)


def summary(total: int, out: GenerationOutput, guidance: GuidanceConfig | None, args: argparse.Namespace,
            weights: str, step: int) -> str:
    """The summary line: the count, the mode, the sampler and its NFE, and the guidance applied (classifier-free
    always, off included; classifier guidance where given)."""
    if out.mode == "readout":
        how = "read-out"
    else:
        cfg = f"classifier-free guidance {out.cfg_scale:g}" if out.cfg_scale != 1 else "no classifier-free guidance"
        how = f"{args.sampler}, {out.nfe} network evaluations, {cfg}"
        if guidance is not None:
            whose = f"the head of {args.classifier}" if args.classifier else "the model's own head"
            how += f", classifier guidance {guidance.scale:g} towards the given {guidance.modality!r} by {whose}"
    return f"mtd sample: {total} samples ({out.mode}, {how}, {weights_text(weights)} weights of step {step})"


@handle_errors("sample")
def main(args: argparse.Namespace) -> int:
    """Run ``mtd sample``."""
    from mtd_core.sampling.generate import generate
    from mtd_core.training.checkpoint import write_atomic
    from mtd_core.training.grids import render_grid, sample_cells, save_png
    from mtd_core.training.run import load_run

    if args.n < 1:
        raise ConfigError(f"--n must be positive, got {args.n}")
    check_seed(args.seed)
    check_device(args.device)
    out_dir = check_out_dir(args.out)
    options = parse_options(args.option, args.sampler)
    temperatures = parse_temperatures(args.encoding_temperature)
    loaded = load_run(args.run, ema=ema_choice(args), device=args.device)
    model = loaded.model
    given, total, row_labels = parse_given(model, args.given, args.n, loaded.dataset_info.get("class_names"))
    inpaint = parse_inpaint(model, args.inpaint, args.mask, total)
    guidance = _guidance(model, given, args)
    g = torch.Generator(args.device).manual_seed(args.seed)
    out = generate(model, n=total, given=given or None, sampler=args.sampler, steps=args.steps, nfe=args.nfe,
                   eta=args.eta, guidance=guidance, generator=g, progress=not args.no_progress,
                   conditioning=args.conditioning, encoding_temperature=temperatures,
                   spacing=args.spacing, clip=args.clip, clip_eps=args.clip_eps, clip_percentile=args.clip_percentile,
                   sampler_options=options, joint=args.joint,
                   cfg_scale=args.cfg_scale, keep_observed=not args.no_keep_observed, inpaint=inpaint)
    samples = dict(out.samples)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = sample_cells(model.taskset, samples, loaded.dataset_info.get("class_names"))
    ncols = args.n if row_labels else max(1, math.ceil(math.sqrt(total)))
    grid = save_png(out_dir / "samples.png", render_grid(cells, ncols, row_labels=row_labels))
    import io

    buf = io.BytesIO()
    np.savez(buf, **to_npz_arrays(model.taskset, samples))  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
    write_atomic(out_dir / "samples.npz", buf.getvalue())
    print(f"{summary(total, out, guidance, args, loaded.weights, loaded.step)}\n"
          f"  grid: {grid}\n  raw:  {out_dir / 'samples.npz'}")
    return 0
