"""Run configuration: the TOML file's four tables, ``--set`` overrides, and resolution to a complete config.

    [dataset]    which data (mtd_core/data/build.py)
    [taskset]    modalities + [taskset.diffusion] (mtd_core/taskset.py)
    [backbone]   name = "unet" and the backbone's options
    [trainer]    TrainConfig below

Every unknown key is a ConfigError suggesting the nearest valid key. The resolved config (every default filled
in) is what ``mtd config show`` prints and what every checkpoint stores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from mtd_core.config_types import check_fields
from mtd_core.data.build import DatasetConfig
from mtd_core.diffusion.loss import LOSS_KINDS
from mtd_core.errors import ConfigError, MTDError, closest
from mtd_core.sampling.options import DEFAULT_SAMPLER, DEFAULT_STEPS
from mtd_core.training.config_checks import (COMPILE_OFF, EMASpec, betas_pair, boolean, check_emas, compile_mode,
                                              device_name, ema_lengths, float_in, int_at_least, non_empty_str,
                                              one_of, to_float)
from mtd_core.tomlio import TOMLDecodeError, loads_toml, plain, read_toml
from mtd_core.types import ConfigDict, ConfigMapping, ConfigValue

if TYPE_CHECKING:
    from mtd_core.modality import LatentSpec
    from mtd_core.plugins.registry import Registry

SECTIONS = ("dataset", "taskset", "backbone", "trainer")
LR_SCHEDULES = ("constant", "cosine")
GRAD_CLIP_SCOPES = ("model", "part")

def check_accumulate(batch_size: int, accumulate: int, world_size: int = 1) -> None:
    """A ConfigError naming ``trainer.accumulate`` unless the global batch splits into ``accumulate`` equal
    micro-batches on each of ``world_size`` processes."""
    if batch_size % (accumulate * world_size):
        on = f" x {world_size} processes" if world_size > 1 else ""
        raise ConfigError(f"trainer.accumulate = {accumulate}{on}: trainer.batch_size = {batch_size} must divide by "
                          f"{accumulate * world_size} (accumulate{' x processes' if on else ''}), so that every "
                          "micro-step has the same number of examples")


@attrs.frozen
class TrainConfig:
    """The ``[trainer]`` table: optimisation, logging, sampling and checkpointing of one run.

    Args:
        steps: total optimisation steps of the run.
        batch_size: the global batch size (split evenly over data-parallel processes).
        accumulate: micro-steps per optimisation step (gradient accumulation): the global batch is split into this
            many slices whose scaled gradients add up before one update, so a batch too large for the device's
            memory trains as one (``batch_size`` must divide by ``accumulate`` times the number of processes).
        lr: the AdamW learning rate after warm-up.
        weight_decay: AdamW's decoupled weight decay.
        betas: AdamW's (beta1, beta2).
        warmup_steps: linear learning-rate warm-up from 0 over this many steps.
        lr_schedule: "constant" after warm-up, or "cosine" decay to ``final_lr_fraction * lr`` at ``steps``.
        final_lr_fraction: the end point of the cosine schedule, as a fraction of ``lr``.
        grad_clip: clip the gradient norm to this value; 0 disables clipping.
        grad_clip_scope: "model" (one norm over every parameter) or "part" (the backbone and each modality's
            encoder and head clipped apart, so that one modality's large head gradients never shrink the backbone's
            step; docs/training.md, "Gradient clipping").
        ema_decay: decay of the exponential moving average of the weights; 0 disables the EMA.
        ema_warmup: ramp the EMA decay up as min(ema_decay, (1 + n) / (10 + n)) over the first updates.
        ema_halflife: the default EMA's half-life in training examples instead of ``ema_decay`` (EDM's definition:
            decay 0.5 ** (batch_size / halflife) per step); 0 uses ``ema_decay`` (which still turns the EMAs off at 0).
        ema_rampup: EDM's ramp-up of every half-life EMA: its half-life is at most this fraction of the examples
            seen so far (0: no ramp-up); ``ema_warmup`` plays that part for ``ema_decay``.
        emas: further EMAs kept beside the default one (named "ema"), each ``{name, halflife}`` (half-life in
            training examples), updated every step, saved in every checkpoint, chosen at sampling time by name.
        loss: the training loss, "simple" (eps MSE + heads' NLL) or "vlb".
        bf16: run forward passes under bfloat16 autocast (CPU and CUDA); weights and optimizer stay float32.
        compile: "off", or a torch.compile mode ("default", "reduce-overhead", "max-autotune", ...: those the
            installed torch knows) to compile the backbone in place (its state_dict keys do not change, so
            checkpoints of compiled and eager runs are interchangeable; mtd_core/training/speed.py).
        channels_last: keep the backbone's weights and 4-D inputs in the channels-last memory format.
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        seed: seeds weights, data order, timesteps, noise and derived modalities.
        threads: torch CPU threads (0: torch's default).
        log_every: write a metrics line (and update the progress bar text) every this many steps.
        sample_every: write a sample grid every this many steps (0: only at the end of the run).
        sample_n: samples per grid.
        sample_sampler: the registered sampler of the grids (checked against the registry by ``resolve_config``);
            by default ``generate()``'s, so that a grid shows what ``mtd sample`` will draw from the run.
        sample_steps: sampler steps for the grids (default ``generate()``'s).
        checkpoint_every: save a checkpoint every this many steps (0: only at the end and when stopped).
        keep_last: keep the newest this many checkpoints (0: keep all).
        progress: show a tqdm progress bar (rank 0 only).
        tensorboard: also write the scalars of metrics.jsonl as TensorBoard events into ``<run>/tensorboard/``
            (rank 0; needs the optional extra: ``pip install 'mtd[tensorboard]'``).
    """

    steps: int = attrs.field(default=2000, validator=int_at_least("steps", 1))
    batch_size: int = attrs.field(default=64, validator=int_at_least("batch_size", 1))
    accumulate: int = attrs.field(default=1, validator=int_at_least("accumulate", 1))
    lr: float = attrs.field(default=2e-4, converter=to_float, validator=float_in("lr", 0.0, low_open=True))
    weight_decay: float = attrs.field(default=0.0, converter=to_float, validator=float_in("weight_decay", 0.0))
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.999), converter=betas_pair)
    warmup_steps: int = attrs.field(default=100, validator=int_at_least("warmup_steps", 0))
    lr_schedule: str = attrs.field(default="constant", validator=one_of("lr_schedule", LR_SCHEDULES))
    final_lr_fraction: float = attrs.field(default=0.1, converter=to_float, validator=float_in("final_lr_fraction", 0.0))
    grad_clip: float = attrs.field(default=1.0, converter=to_float, validator=float_in("grad_clip", 0.0))
    grad_clip_scope: str = attrs.field(default="model", validator=one_of("grad_clip_scope", GRAD_CLIP_SCOPES))
    ema_decay: float = attrs.field(default=0.999, converter=to_float, validator=float_in("ema_decay", 0.0, 1.0))
    ema_warmup: bool = attrs.field(default=True, validator=boolean("ema_warmup"))
    ema_halflife: float = attrs.field(default=0.0, converter=to_float, validator=float_in("ema_halflife", 0.0))
    ema_rampup: float = attrs.field(default=0.05, converter=to_float, validator=float_in("ema_rampup", 0.0))
    emas: tuple[EMASpec, ...] = attrs.field(default=(), converter=ema_lengths)
    loss: str = attrs.field(default="simple", validator=one_of("loss", LOSS_KINDS))
    bf16: bool = attrs.field(default=False, validator=boolean("bf16"))
    compile: str = attrs.field(default=COMPILE_OFF, validator=compile_mode)
    channels_last: bool = attrs.field(default=False, validator=boolean("channels_last"))
    device: str = attrs.field(default="auto", validator=device_name)
    seed: int = attrs.field(default=0, validator=int_at_least("seed", 0))
    threads: int = attrs.field(default=0, validator=int_at_least("threads", 0))
    log_every: int = attrs.field(default=50, validator=int_at_least("log_every", 1))
    sample_every: int = attrs.field(default=0, validator=int_at_least("sample_every", 0))
    sample_n: int = attrs.field(default=16, validator=int_at_least("sample_n", 0))
    sample_sampler: str = attrs.field(default=DEFAULT_SAMPLER, validator=non_empty_str("sample_sampler"))
    sample_steps: int = attrs.field(default=DEFAULT_STEPS, validator=int_at_least("sample_steps", 1))
    checkpoint_every: int = attrs.field(default=500, validator=int_at_least("checkpoint_every", 0))
    keep_last: int = attrs.field(default=3, validator=int_at_least("keep_last", 0))
    progress: bool = attrs.field(default=True, validator=boolean("progress"))
    tensorboard: bool = attrs.field(default=False, validator=boolean("tensorboard"))

    def __attrs_post_init__(self) -> None:
        check_accumulate(self.batch_size, self.accumulate)
        check_emas(self.ema_decay, self.ema_halflife, self.emas)

    def to_dict(self) -> ConfigDict:
        """A plain dict (lists for tuples); :meth:`from_dict` inverts it."""
        d = attrs.asdict(self)
        d["betas"] = list(self.betas)
        d["emas"] = [attrs.asdict(e) for e in self.emas]
        return d

    @classmethod
    def from_dict(cls, d: ConfigMapping) -> TrainConfig:
        """From the ``[trainer]`` table; unknown keys are ConfigErrors naming the nearest valid key."""
        fields = [f.name for f in attrs.fields(cls)]
        for key in d:
            if key not in fields:
                raise ConfigError(f"trainer: unknown key {key!r}{closest(str(key), fields)}; valid keys: {fields}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"trainer: {e}") from None

    # which keys may differ between a checkpoint and a resumed run
    RESUMABLE_CHANGES = ("steps", "log_every", "sample_every", "sample_n", "sample_sampler", "sample_steps",
                         "checkpoint_every", "keep_last", "progress", "threads", "device", "tensorboard",
                         "compile", "channels_last")


@attrs.frozen
class RunConfig:
    """A whole run: the four tables of a TOML config.

    Args:
        dataset: the ``[dataset]`` table (name, keys, transforms, factory options).
        taskset: the ``[taskset]`` table (modalities, diffusion, latent_shape).
        backbone: the ``[backbone]`` table ("name" and the backbone's options).
        trainer: the ``[trainer]`` table.
    """

    dataset: ConfigDict = attrs.field(factory=lambda: {"name": "digits"})
    taskset: ConfigDict = attrs.field(factory=dict)
    backbone: ConfigDict = attrs.field(factory=lambda: {"name": "unet"})
    trainer: TrainConfig = attrs.field(factory=TrainConfig)

    def to_dict(self) -> ConfigDict:
        """Plain nested dicts; :meth:`from_dict` inverts it."""
        return {"dataset": dict(self.dataset), "taskset": dict(self.taskset), "backbone": dict(self.backbone),
                "trainer": self.trainer.to_dict()}

    @classmethod
    def from_dict(cls, d: ConfigMapping) -> RunConfig:
        """From a parsed TOML document; unknown tables are ConfigErrors with the nearest valid name."""
        for key in d:
            if key not in SECTIONS:
                raise ConfigError(f"unknown table [{key}]{closest(str(key), SECTIONS)}; a run config has the "
                                  f"tables {['[' + s + ']' for s in SECTIONS]}")
            if not isinstance(d[key], Mapping):
                raise ConfigError(f"[{key}] must be a table, got {type(d[key]).__name__}")
        if "taskset" not in d:
            raise ConfigError("the config has no [taskset] table (it lists the modalities to train)")
        backbone = dict(d.get("backbone", {"name": "unet"}))
        backbone.setdefault("name", "unet")
        dataset = dict(d.get("dataset", {"name": "digits"}))
        dataset.setdefault("name", "digits")
        for section, table in (("dataset", dataset), ("backbone", backbone)):
            if not isinstance(table["name"], str) or not table["name"]:
                raise ConfigError(f"{section}.name must be a registered name (a non-empty string), got "
                                  f"{table['name']!r}")
        DatasetConfig.from_dict(dataset)  # its generic keys (the factory's options are checked on loading)
        return cls(dataset=dataset, taskset=dict(d["taskset"]), backbone=backbone,
                   trainer=TrainConfig.from_dict(d.get("trainer", {})))


# -- reading TOML and applying --set --------------------------------------------------------------------
def parse_value(text: str) -> ConfigValue:
    """A ``--set`` value: parsed as a TOML value (numbers, booleans, strings in quotes, [lists], {tables});
    anything that is not valid TOML is taken as a bare string (so ``dataset.name=npz`` works)."""
    try:
        return loads_toml(f"v = {text}")["v"]
    except TOMLDecodeError:
        return text


def apply_override(config: ConfigDict, assignment: str) -> None:
    """Apply one ``key.path=value`` to nested dicts/lists in place (list items by index: taskset.modalities.1.x)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. trainer.steps=100")
    path, text = assignment.split("=", 1)
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"--set {assignment!r}: empty key")
    if keys[0] not in SECTIONS:
        raise ConfigError(f"--set {assignment!r}: the key must start with a table name {list(SECTIONS)}"
                          f"{closest(keys[0], SECTIONS)}")
    node: ConfigValue = config
    for i, k in enumerate(keys[:-1]):
        where = ".".join(keys[: i + 1])
        if isinstance(node, list):
            node = node[_index(k, node, where, assignment)]
        else:
            node = node.setdefault(k, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {assignment!r}: {where} is a value, not a table")
    last = keys[-1]
    if isinstance(node, list):
        node[_index(last, node, path, assignment)] = parse_value(text)
    else:
        node[last] = parse_value(text)


def _index(k: str, node: list, where: str, assignment: str) -> int:
    if not k.isdigit() or int(k) >= len(node):
        raise ConfigError(f"--set {assignment!r}: {where} needs a list index in 0..{len(node) - 1}, got {k!r}")
    return int(k)


def read_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a TOML run config, apply ``--set`` overrides, and check its structure (not yet resolved)."""
    path = Path(path)
    data = read_toml(path)
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        return RunConfig.from_dict(data)
    except MTDError as e:
        raise type(e)(f"{path}: {e}") from e


def resolve_config(config: RunConfig, registry: Registry | None = None) -> RunConfig:
    """The config with every default filled in and every part validated (dataset and backbone options against
    their factories, the task set and the backbone by building them once). Loads no data and trains nothing."""
    from mtd_core.data.build import check_options, resolve_dataset_config
    from mtd_core.taskset import TaskSet

    if registry is None:
        from mtd_core.plugins.registry import get_registry

        registry = get_registry()
    dataset = resolve_dataset_config(config.dataset, registry).to_dict()
    ts = TaskSet.from_config(config.taskset, registry)
    backbone = _resolve_backbone(config.backbone, ts.latent, registry, check_options)
    taskset = ts.to_config()
    try:
        sampler = registry.sampler(config.trainer.sample_sampler)
    except MTDError as e:
        raise ConfigError(f"trainer.sample_sampler: {e}") from None
    if config.trainer.sample_n and not sampler.min_steps <= config.trainer.sample_steps <= ts.noise.T:
        raise ConfigError(f"trainer.sample_steps must lie in {sampler.min_steps}..{ts.noise.T} (sampler "
                          f"{config.trainer.sample_sampler!r}, T = {ts.noise.T}), got {config.trainer.sample_steps}")
    return RunConfig(dataset=plain(dataset), taskset=taskset, backbone=backbone, trainer=config.trainer)


def _resolve_backbone(table: ConfigMapping, latent: LatentSpec, registry: Registry,
                      check_options: Callable[[str, Callable[..., object], ConfigMapping], None]) -> ConfigDict:
    """The ``[backbone]`` table with its defaults, validated by building the backbone once on the meta device (no
    weights are allocated, however large the options), then each given option checked against the annotation of
    its field in the built backbone's attrs ``config`` (``mid_attention = "abc"`` is an error, not true)."""
    import torch

    options = dict(table)
    name = options.pop("name", "unet")
    try:
        factory = registry.backbone(str(name))
    except MTDError as e:
        raise ConfigError(f"backbone.name: {e}") from None
    check_options(f"backbone {name!r}", factory, options)
    try:
        with torch.device("meta"):
            built = factory(latent, **options)
    except MTDError as e:  # named with the options given: "lower channels" may come from time_embed_dim
        raise type(e)(f"{e} (backbone options given: {options})") from None
    except (TypeError, ValueError, OverflowError, RuntimeError) as e:  # a plugin backbone's own failure
        raise ConfigError(f"backbone {name!r}: the options {options} are invalid: {type(e).__name__}: {e}") from None
    config_cls = type(getattr(built, "config", None))
    check_fields(config_cls, options, lambda key: f"backbone.{key}")
    resolved = attrs.asdict(getattr(built, "config")) if attrs.has(config_cls) else {}
    return {"name": name, **plain({**resolved, **options})}


def config_diff(a: object, b: object, prefix: str = "") -> list[str]:
    """Dotted keys where two plain configs differ (for resume checks)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += config_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += config_diff(x, y, f"{prefix}{i}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
