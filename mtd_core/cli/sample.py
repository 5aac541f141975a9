"""``mtd sample RUN_DIR --out DIR [--given name=value ...] [--n N] [--sampler NAME --nfe N] [--seed S]``.

Draws samples from a trained run (EMA weights of its latest checkpoint) and writes ``samples.png`` (a captioned
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
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mtd_core.cli.train import check_device, check_out_dir, handle_errors
from mtd_core.diffusion.noise import RESPACINGS
from mtd_core.errors import ConfigError, ModalityDataError, closest
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
    from mtd_core.taskset import TaskSet
    from mtd_core.types import Batch, BatchValue


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mtd sample``."""
    p = subparsers.add_parser("sample", help="draw samples from a trained run",
                              description="Draw joint or conditional samples from a trained run and write a PNG "
                                          "grid and the raw samples (.npz).")
    p.add_argument("run", help="the run folder (or one checkpoint folder)")
    p.add_argument("--out", required=True, help="folder for samples.png and samples.npz")
    p.add_argument("--given", action="append", default=[], metavar="NAME=VALUE",
                   help="condition on a modality (repeatable), e.g. --given label=3 or --given label=0,1,2")
    p.add_argument("--n", type=int, default=16, help="samples (per given value when a list is given); default 16")
    _add_sampler_options(p)
    _add_conditioning_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
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
                   help="also steer towards the given label with the model's own label head, or with --classifier's "
                        "(classifier guidance at this scale; default 0, or 1 with --classifier)")
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


def parse_given(model: MultiTaskModel, items: list[str], n: int, dataset_names: list[str] | None = None
                ) -> tuple[Batch, int, list[str] | None]:
    """The ``given`` dict for generate(), the total sample count, and row labels (one per given value).

    Each value is read by its modality's ``parse`` (docs/plugins.md); every given modality is repeated to the same
    batch, and a value that parses to several rows (``--given label=0,1,2``) makes one grid row of ``n`` per row.
    """
    from mtd_core.training.grids import class_names_for

    modalities = model.taskset.modalities
    raw: dict[str, list[BatchValue]] = {}
    names: dict[str, list[str] | None] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--given {item!r}: expected NAME=VALUE, e.g. label=3")
        name, value = item.split("=", 1)
        if name not in modalities:
            raise ConfigError(f"--given {item!r}: the run has no modality {name!r}{closest(name, list(modalities))}; "
                              f"it has {list(modalities)}")
        m = modalities[name]
        names[name] = class_names_for(m, dataset_names)
        try:
            rows = m.parse(value, names[name])
        except ModalityDataError as e:
            raise ModalityDataError(f"--given {name}: {e}") from None
        raw[name] = [rows[i:i + 1] for i in range(len(rows))]
    rows_n = max((len(v) for v in raw.values()), default=1)
    given: Batch = {}
    for name, given_rows in raw.items():
        if len(given_rows) not in (1, rows_n):
            raise ConfigError(f"--given: lists must have the same length; {name!r} has {len(given_rows)}, another "
                              f"{rows_n}")
        parts = [given_rows[r if len(given_rows) > 1 else 0] for r in range(rows_n)]
        if isinstance(parts[0], list):
            given[name] = [v for part in parts for v in part * n]
        else:
            given[name] = torch.cat([part.repeat(n, *([1] * (part.ndim - 1))) for part in parts])
    total = len(next(iter(given.values()))) if given else n
    labels = None
    if rows_n > 1:
        name = next(k for k, v in raw.items() if len(v) == rows_n)
        m = modalities[name]
        labels = [(m.describe(row[0], names[name]) if isinstance(row, torch.Tensor) else None) or str(r)
                  for r, row in enumerate(raw[name])]
    return given, total, labels


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


def parse_value(text: str) -> bool | int | float | str:
    """A command-line value: true/false as booleans, integers and floats as numbers, anything else as it is."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_options(items: list[str]) -> dict[str, bool | int | float | str]:
    """``--option KEY=VALUE`` as a mapping of :func:`parse_value` values (the sampler checks the names)."""
    out: dict[str, bool | int | float | str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE, e.g. lower_order_final=false")
        out[key] = parse_value(value)
    return out


def parse_temperatures(items: list[str]) -> dict[str, float]:
    """``--encoding-temperature NAME=TAU`` options as a mapping (generate checks the names and values)."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = float(value)
        except ValueError:
            raise ConfigError(f"--encoding-temperature {item!r}: expected NAME=TAU with a number TAU, e.g. "
                              "label=0.125") from None
    return out


def parse_inpaint(model: MultiTaskModel, image: str | None, mask: str | None, n: int
                  ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``--inpaint IMAGE --mask MASK`` as generate()'s ``inpaint``: the image read by the base's ``parse``, repeated
    ``n`` times, and the mask (True where generated) shaped like the image or like one of its channels."""
    from mtd_core.imageio import read_image, read_npy

    if image is None and mask is None:
        return None
    if image is None or mask is None:
        raise ConfigError("--inpaint IMAGE and --mask MASK go together: the image to inpaint and what to generate of it")
    base = model.taskset.base
    if base is None:
        raise ConfigError(f"--inpaint: the run's task set has no base modality to inpaint; it has "
                          f"{list(model.taskset.modalities)}")
    try:
        images = base.parse(image)
    except ModalityDataError as e:
        raise ModalityDataError(f"--inpaint: {e}") from None
    if not isinstance(images, torch.Tensor) or len(images) != 1:
        raise ModalityDataError(f"--inpaint {image}: expected one image of the base {base.name!r}")
    c, h, w = images.shape[1:]
    if mask.endswith(".npy"):
        m = read_npy(mask, where="--mask")
        if m.dtype != torch.bool:
            if m.is_floating_point() or not bool(((m == 0) | (m == 1)).all()):
                raise ModalityDataError(f"--mask {mask}: expected bools or 0/1 values (1 where generated), got "
                                        f"{m.dtype} values {m.unique()[:6].tolist()}")
            m = m == 1
    else:
        m = torch.from_numpy(read_image(Path(mask), 1, where="--mask")[0] >= 128)
    if m.ndim == 2:
        m = m[None]
    if tuple(m.shape) not in ((c, h, w), (1, h, w)):
        raise ModalityDataError(f"--mask {mask}: expected a {w}x{h} mask (shape ({h}, {w}), (1, {h}, {w}) or "
                                f"({c}, {h}, {w})) for the base {base.name!r}, got shape {tuple(m.shape)}")
    if not bool(m.any()):
        raise ModalityDataError(f"--mask {mask}: marks nothing to generate (every value is 0 or below 128)")
    return images.repeat(n, 1, 1, 1), m[None].expand(n, c, h, w)


@handle_errors("sample")
def main(args: argparse.Namespace) -> int:
    """Run ``mtd sample``."""
    from mtd_core.sampling.generate import generate
    from mtd_core.training.checkpoint import write_atomic
    from mtd_core.training.grids import render_grid, sample_cells, save_png
    from mtd_core.training.run import load_run

    if args.n < 1:
        raise ConfigError(f"--n must be positive, got {args.n}")
    check_device(args.device)
    out_dir = check_out_dir(args.out)
    loaded = load_run(args.run, ema=not args.no_ema, device=args.device)
    model = loaded.model
    given, total, row_labels = parse_given(model, args.given, args.n, loaded.dataset_info.get("class_names"))
    inpaint = parse_inpaint(model, args.inpaint, args.mask, total)
    guidance = None
    scale = args.guidance if args.guidance is not None else (1.0 if args.classifier else 0.0)
    if scale or args.classifier:
        from mtd_core.sampling.guidance import GuidanceConfig, head_classifier

        option = "--classifier" if args.classifier else "--guidance"
        heads = [k for k, m in model.taskset.modalities.items() if k in given and m.role is Role.AGGREGATED]
        if len(heads) != 1:
            raise ConfigError(f"{option} needs exactly one given aggregated modality (e.g. --given label=3): its "
                              f"head steers towards the given value; given {sorted(given)}")
        classifier = None
        if args.classifier:
            clf = load_run(args.classifier, ema=not args.no_ema, device=args.device).model
            classifier = head_classifier(clf, heads[0], model)
        guidance = GuidanceConfig(modality=heads[0], target=given[heads[0]], scale=scale, classifier=classifier)
    g = torch.Generator(args.device).manual_seed(args.seed)
    out = generate(model, n=total, given=given or None, sampler=args.sampler, steps=args.steps, nfe=args.nfe,
                   eta=args.eta, guidance=guidance, generator=g, progress=not args.no_progress,
                   conditioning=args.conditioning, encoding_temperature=parse_temperatures(args.encoding_temperature),
                   spacing=args.spacing, clip=args.clip, clip_eps=args.clip_eps, clip_percentile=args.clip_percentile,
                   sampler_options=parse_options(args.option), joint=args.joint,
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
    how = "read-out" if out.mode == "readout" else f"{args.sampler}, {out.nfe} network evaluations" + (
        f", classifier-free guidance {out.cfg_scale:g}" if out.cfg_scale != 1 else "")
    print(f"mtd sample: {total} samples ({out.mode}, {how}, {loaded.weights} weights of step {loaded.step})\n"
          f"  grid: {grid}\n  raw:  {out_dir / 'samples.npz'}")
    return 0
