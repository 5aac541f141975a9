"""``mtd sample``'s values given on the command line: ``--given``, ``--option``, ``--encoding-temperature``,
``--inpaint``/``--mask``, and the weights chosen by ``--ema``/``--no-ema`` (shared with ``mtd eval``). Each is read strictly: a value that does not read as what its option expects, or a name
given twice, is a ConfigError (or ModalityDataError) naming the option and what was expected; nothing is coerced."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mtd_core.cli.common import key_value_pairs
from mtd_core.errors import ConfigError, ModalityDataError, MTDError, closest

if TYPE_CHECKING:
    from mtd_core.model import MultiTaskModel
    from mtd_core.types import Batch, BatchValue

OptionValue = bool | int | float | str
TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")
BOOL_WORDS = "true/false, yes/no or 1/0"


def parse_given(model: MultiTaskModel, items: list[str], n: int, dataset_names: list[str] | None = None
                ) -> tuple[Batch, int, list[str] | None]:
    """The ``given`` dict for generate(), the total sample count, and row labels (one per given value).

    Each value is read by its modality's ``parse`` (docs/plugins.md); every given modality is repeated to the same
    batch, and a value that parses to several rows (``--given label=0,1,2``) makes one grid row of ``n`` per row.
    A modality given twice is a ConfigError naming it (one ``--given`` takes a list: ``label=1,2``).
    """
    from mtd_core.training.grids import class_names_for

    modalities = model.taskset.modalities
    raw: dict[str, list[BatchValue]] = {}
    names: dict[str, list[str] | None] = {}
    for name, value in key_value_pairs("--given", items, "NAME=VALUE", "label=3", "modality",
                              " (one --given takes a list, one grid row per value: label=0,1,2)"):
        if name not in modalities:
            raise ConfigError(f"--given {name}={value}: the run has no modality {name!r}"
                              f"{closest(name, list(modalities))}; it has {list(modalities)}")
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


def parse_value(text: str) -> OptionValue:
    """A command-line value whose type is not known: true/false as booleans, integers and floats as numbers,
    anything else as it is."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_bool(text: str, where: str) -> bool:
    """``text`` as a boolean (true/false, yes/no or 1/0, any case): a ConfigError naming ``where`` otherwise."""
    low = text.strip().lower()
    if low in TRUE_WORDS or low in FALSE_WORDS:
        return low in TRUE_WORDS
    raise ConfigError(f"{where}: expected a boolean ({BOOL_WORDS}), got {text!r}")


def option_types(sampler: str) -> dict[str, type]:
    """The types of the registered sampler's own options (bool, int, float or str), read off its function's
    annotations or defaults; options of another type, or of an unknown sampler (generate names it), are left out."""
    from mtd_core.plugins.registry import get_registry

    try:
        spec = get_registry().sampler(sampler)
        params = inspect.signature(spec.fn).parameters
        own = spec.option_names()
    except (MTDError, TypeError, ValueError):
        return {}
    known = {t.__name__: t for t in (bool, int, float, str)}
    types: dict[str, type] = {}
    for p in params.values():
        if p.name not in own:
            continue
        annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", None)
        if annotation in known:
            types[p.name] = known[annotation]
        elif p.annotation is p.empty and p.default is not p.empty and type(p.default) in known.values():
            types[p.name] = type(p.default)
    return types


def typed_value(key: str, text: str, kind: type | None) -> OptionValue:
    """``--option KEY=TEXT`` read as ``kind`` (a bool strictly, see :func:`parse_bool`; a number; a string as it
    is), or by :func:`parse_value` when the type is not known."""
    where = f"--option {key}={text}"
    if kind is bool:
        return parse_bool(text, where)
    if kind is str:
        return text
    if kind is int or kind is float:
        try:
            return int(text) if kind is int else float(text)
        except ValueError:
            raise ConfigError(f"{where}: expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    return parse_value(text)


def parse_options(items: list[str], sampler: str | None = None) -> dict[str, OptionValue]:
    """``--option KEY=VALUE`` as a mapping, each value read as the type of ``sampler``'s option of that name
    (:func:`typed_value`; the sampler checks the names). A key given twice is a ConfigError."""
    types = option_types(sampler) if sampler is not None and items else {}
    out: dict[str, OptionValue] = {}
    for key, value in key_value_pairs("--option", items, "KEY=VALUE", "lower_order_final=false", "option"):
        if not key.isidentifier():
            raise ConfigError(f"--option {key}={value}: {key!r} is not an option name; expected KEY=VALUE, e.g. "
                              "lower_order_final=false")
        out[key] = typed_value(key, value, types.get(key))
    return out


def parse_temperatures(items: list[str]) -> dict[str, float]:
    """``--encoding-temperature NAME=TAU`` options as a mapping (generate checks the names and values); a name
    given twice is a ConfigError."""
    out: dict[str, float] = {}
    for name, value in key_value_pairs("--encoding-temperature", items, "NAME=TAU with a number TAU", "label=0.125",
                               "modality"):
        try:
            out[name] = float(value)
        except ValueError:
            raise ConfigError(f"--encoding-temperature {name}={value}: expected NAME=TAU with a number TAU, e.g. "
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




def add_ema_options(p: argparse.ArgumentParser, verb: str) -> None:
    """``--ema NAME`` (which EMA's weights) and ``--no-ema`` (the raw weights, as ``--ema model``)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--ema", default=None, metavar="NAME",
                       help=f"{verb} the weights of the EMA of this name: 'ema' (the default EMA, used without this "
                            "option), a name of the run's trainer.emas, or 'model' for the raw weights")
    group.add_argument("--no-ema", action="store_true", help=f"{verb} the raw weights instead of the EMA (--ema model)")


def ema_choice(args: argparse.Namespace) -> bool | str:
    """``load_run``'s ``ema`` for ``--ema``/``--no-ema``: True (the default EMA), False (raw weights) or a name."""
    return False if args.no_ema else True if args.ema is None else str(args.ema)


def weights_text(weights: str) -> str:
    """A LoadedRun's ``weights`` as printed: "ema" and "model" as they are, another EMA by its name."""
    return weights if weights in ("ema", "model") else f"EMA {weights!r}"
