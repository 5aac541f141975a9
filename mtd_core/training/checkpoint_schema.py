"""The structure of a checkpoint's JSON files (state.json, config.json), checked when it is loaded: a missing or
wrongly typed key (a hand-edited file) is a CheckpointError naming the file, the key and what was expected, never a
bare KeyError or TypeError later."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from mtd_core.errors import CheckpointError
from mtd_core.training.manifest import is_finite_number

Check = Callable[[object], bool]


def _int(low: int = 0) -> Check:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _is_dict(v: object) -> bool:
    return isinstance(v, dict)


def _number(v: object) -> bool:
    return is_finite_number(v) and float(v) >= 0  # type: ignore[arg-type]


def _ints(v: object) -> bool:
    return isinstance(v, list) and all(_int(0)(x) for x in v)


def need(file: Path, obj: Mapping[str, object], key: str, check: Check, expected: str, *, prefix: str = "",
         required: bool = True) -> None:
    """Raise CheckpointError naming ``file`` and ``prefix + key`` when ``obj[key]`` is missing (and ``required``)
    or fails ``check``."""
    if key not in obj:
        if required:
            raise CheckpointError(f"{file}: the key '{prefix}{key}' is missing; expected {expected}")
        return
    if not check(obj[key]):
        raise CheckpointError(f"{file}: the key '{prefix}{key}' must be {expected}, got {obj[key]!r:.80}")


def check_trainer_state(file: Path, trainer: Mapping[str, object], *, resuming: bool = False) -> None:
    """The trainer's part of state.json (``trainer``): the data sampler's position, the EMA update count, the
    elapsed time, the examples seen, the last metrics. Each is optional for loading; ``resuming`` requires the
    sampler's position (what the data order continues from)."""
    need(file, trainer, "sampler", _is_dict, "a JSON object (the data sampler's position)", prefix="trainer.",
         required=resuming)
    sampler = trainer.get("sampler")
    if isinstance(sampler, dict):
        for key in ("epoch", "position"):
            need(file, sampler, key, _int(), "an integer >= 0", prefix="trainer.sampler.", required=resuming)
    need(file, trainer, "ema_updates", _int(), "an integer >= 0 (the EMA's update count)", prefix="trainer.",
         required=False)
    need(file, trainer, "elapsed_s", _number, "a finite number >= 0 (seconds)", prefix="trainer.", required=False)
    need(file, trainer, "examples_seen", _int(), "an integer >= 0", prefix="trainer.", required=False)
    need(file, trainer, "metrics", _is_dict, "a JSON object (the last logged metrics)", prefix="trainer.",
         required=False)


def _python_rng(v: object) -> bool:
    return v is None or (isinstance(v, list) and len(v) == 3 and _int()(v[0]) and _ints(v[1]) and len(v[1]) > 0
                         and (v[2] is None or is_finite_number(v[2])))


def _numpy_rng(v: object) -> bool:
    if v is None:
        return True
    if not (isinstance(v, dict) and isinstance(v.get("bit_generator"), str) and isinstance(v.get("state"), dict)):
        return False
    state = v["state"]
    return all(k in v for k in ("has_gauss", "gauss")) and _ints(state.get("key")) and _int()(state.get("pos"))


def _param_groups(v: object) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(g, dict) and _ints(g.get("params")) for g in v)


def _scalars(v: object) -> bool:
    return isinstance(v, dict) and all(k.isdigit() and isinstance(s, dict) for k, s in v.items())


def check_state(file: Path, state: Mapping[str, object], *, optimizer: bool, rng: bool) -> None:
    """state.json beyond its step: the trainer state, the optimizer's param groups and scalars (when the checkpoint
    has optimizer.safetensors) and the python and numpy RNG states (when it has rng.safetensors)."""
    need(file, state, "trainer", _is_dict, "a JSON object (the trainer state)", required=False)
    check_trainer_state(file, state.get("trainer") or {})  # type: ignore[arg-type]
    if optimizer:
        need(file, state, "optimizer", _is_dict, "a JSON object with 'param_groups' and 'scalars' (the checkpoint "
             "has optimizer.safetensors)")
        opt: Mapping[str, object] = state["optimizer"]  # type: ignore[assignment]
        need(file, opt, "param_groups", _param_groups, "a non-empty list of objects, each with a list of integer "
             "'params'", prefix="optimizer.")
        need(file, opt, "scalars", _scalars, "an object from parameter index to an object of values",
             prefix="optimizer.", required=False)
    if rng:
        need(file, state, "rng", _is_dict, "a JSON object with 'python' and 'numpy' (the checkpoint has "
             "rng.safetensors)")
        states: Mapping[str, object] = state["rng"]  # type: ignore[assignment]
        need(file, states, "python", _python_rng, "null or [version, [integers], gauss] (random.getstate())",
             prefix="rng.", required=False)
        need(file, states, "numpy", _numpy_rng, "null or numpy's get_state(legacy=False) object (bit_generator, "
             "state.key, state.pos, has_gauss, gauss)", prefix="rng.", required=False)


def check_config(file: Path, config: Mapping[str, object]) -> None:
    """config.json: each part it may hold has its type (``model`` is required where a model is rebuilt)."""
    need(file, config, "model", _is_dict, "a JSON object (MultiTaskModel.config())", required=False)
    need(file, config, "run", lambda v: v is None or isinstance(v, dict), "a JSON object (the run config) or null",
         required=False)
    need(file, config, "dataset_info", lambda v: v is None or isinstance(v, dict), "a JSON object or null",
         required=False)
    need(file, config, "world_size", _int(1), "an integer >= 1", required=False)
    need(file, config, "dataset_paths", lambda v: v == "run folder", "\"run folder\" (what relative dataset paths "
         "in 'run' are relative to)", required=False)
