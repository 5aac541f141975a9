"""TaskSet: the modalities of one MT-Diffusion model, its noise schedule and its latent space Z, validated as a whole.

Config format (a plain dict; the ``[taskset]`` table of a run config, or a TOML file of its own):

    modalities    a list of modality configs, each with a "kind" (built by the plugin registry)
    diffusion     the noise schedule: {"kind": "linear" | "cosine" | "custom", ...its parameters}
    latent_shape  [C, H, W]; required only when no modality is the base (otherwise inferred from it)
    aux_channels  channels of Z that only the aggregated encodings occupy, after the base's C channels; 0 puts them
                  on the base's own channels (the paper's shared design, docs/math.md, section 2)
    known_input   whether the backbone also sees the known aggregated part sum_j lambda_t^(j) E_j(x_j) of z_t as
                  input channels of its own (docs/math.md, section 4)
    known_dropout with known_input: the probability that training hides one modality's part from that input
                  (default 0.1), so that the network also works where the part is unknown
    aux_eps       with aux_channels: where the auxiliary channels' noise estimate comes from: "heads" (implied by
                  the heads' predicted encodings; "network", the backbone's output, is retired)
    encoding_scale how the model scales each aggregated encoding before w_t weighs it: "rms" or "spread" (about
                  its running mean), for all, or a table {name = kind} for some

Every option a config leaves out comes from its modalities' kinds' designs (``Modality.design``): a minimal config
builds the measured design (docs/models.md, "Defaults and why"); ``mtd config show`` prints every resolved option.
See docs/models.md for an example.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mtd_core.config_types import check_weights
from mtd_core.design import ENCODING_SCALES, EncodingScaleKind
from mtd_core.diffusion.forward import ForwardProcess
from mtd_core.diffusion.noise import NoiseSchedule
from mtd_core.diffusion.weights import peak_ratio, weight_schedule_from_config
from mtd_core.errors import ConfigError, MTDError, PluginError, ScheduleError, closest
from mtd_core.modality import LatentSpec, Modality, Role
from mtd_core.tomlio import dumps_toml, read_toml
from mtd_core.taskset_options import (
    AUX_EPS,
    DEFAULT_KNOWN_DROPOUT,
    AuxEps,
    encoding_scale_config,
    noise_from_config,
    resolve_aux,
    resolve_aux_eps,
    resolve_encoding_scales,
    resolve_known,
    saved_taskset_config,
)
from mtd_core.types import ConfigDict, ConfigMapping, ConfigValue

if TYPE_CHECKING:
    from mtd_core.plugins.registry import Registry


CONFIG_KEYS = ("modalities", "diffusion", "latent_shape", "aux_channels", "known_input", "known_dropout", "aux_eps",
               "encoding_scale")
MAX_LATENT = 2**31 - 1
"""The most values one example's latent may have (int32 indexing; 2**31 float32 values are 8 GiB)."""
PEAK_RATIO_BOUND = 5.0
"""Above this peak ratio max_t lambda_t / sqrt(abar_t), the task set warns when the encodings share the base's
channels (aux_channels = 0): an error of the predicted encoding enters the base estimate multiplied by the ratio.
The default window peaks at 4.27 and measured better than a window bounded at 1
(experiments/notes/where-encodings-live.md); larger ratios were not measured. With channels of their own
(aux_channels > 0) the ratio is reported, not warned about."""


def _latent_shape(value: ConfigValue, where: str) -> tuple[int, int, int]:
    ok = (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3
          and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))
    if not ok:
        raise ConfigError(f"{where}: expected three positive integers [C, H, W], got {value!r}")
    if math.prod(value) > MAX_LATENT:
        raise ConfigError(f"{where}: [C, H, W] = {list(value)} makes {math.prod(value):.3g} latent values per example, "
                          f"above the {MAX_LATENT:.3g} a model can index; lower the sizes or channels")
    return (int(value[0]), int(value[1]), int(value[2]))


class TaskSet:
    """The modalities of a model, its noise schedule and the shared latent shape, checked together.

    Args:
        modalities: the configured modalities, in order (the order of encoders, heads and configs).
            Names must be unique and at most one modality may have the base role.
        noise: the variance schedule beta_t (default: DDPM's linear schedule with T = 1000).
        latent_shape: (C, H, W) of the base's part of Z. Inferred from the base's ``latent_shape()`` when omitted;
            required when there is no base; a ConfigError when it contradicts the base.
        aux_channels: A >= 0, the channels of Z that only the aggregated encodings occupy (Z is then
            (C + A, H, W); the base fills the first C, every encoder E_i maps into the last A); 0 puts them on the
            base's channels. None (the default): the most any aggregated kind's ``design.own_channels`` asks for
            (a modality weighted zero, which never reaches z_t, asks for none).
        known_input: the backbone also sees the known aggregated part of z_t (docs/math.md, section 4): what a
            sampler knows exactly (observed or committed modalities' sum_j lambda_t^(j) E_j(x_j)) enters as C + A
            channels of their own beside z_t, zeros where nothing is known. None (the default): true when any
            aggregated kind's ``design.known_input`` asks for it (the label's), unless it is weighted zero.
        known_dropout: with ``known_input``, the probability in [0, 1) that a training example's part of one
            modality is hidden from that input (default 0.1).
        aux_eps: with ``aux_channels``, where eps_theta's auxiliary channels come from: "heads" (the default),
            implied by the heads' predicted encodings, eps_aux = (z_aux - sum_i lambda_t^(i) E_hat_i) /
            sqrt(1 - abar_t), exact since z_0 is zero there (docs/math.md, section 2). "network" (the backbone's
            output) is retired: it is replaced by "heads" with a RetiredOptionWarning unless ``pinned``.
        encoding_scale: how the model scales each aggregated encoding (those of modalities whose ``normalize``
            option is not off) before w_t weighs it: "rms" (divided by its RMS) or "spread" (a running mean
            subtracted, then divided by the RMS spread about it; docs/math.md, section 2), for every modality, or
            a mapping naming some. None (the default): each kind's ``design.encoding_scale``.
        pinned: the options come from a saved config (a checkpoint's): retired values load as they were.

    Raises:
        ConfigError: duplicate names, two bases, a missing or conflicting latent shape, a non-Modality.
        ScheduleError: an aggregated modality's weight schedule is invalid on ``noise`` (e.g. lambda_T too
            large); the message names the modality.
    """

    def __init__(self, modalities: Sequence[Modality], noise: NoiseSchedule | None = None,
                 latent_shape: tuple[int, int, int] | None = None, aux_channels: int | None = None,
                 known_input: bool | None = None, known_dropout: float | None = None, aux_eps: AuxEps | None = None,
                 encoding_scale: EncodingScaleKind | Mapping[str, EncodingScaleKind] | None = None, *,
                 pinned: bool = False) -> None:
        mods = list(modalities)
        if not mods:
            raise ConfigError("taskset: needs at least one modality, got none")
        for i, m in enumerate(mods):
            if not isinstance(m, Modality):
                raise ConfigError(f"taskset: modalities[{i}] must be a Modality instance, got {type(m).__name__}")
        names = [m.name for m in mods]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"taskset: modality names must be unique; repeated: {dupes} (set a distinct 'name')")
        bases = [m for m in mods if m.role is Role.BASE]
        if len(bases) > 1:
            raise ConfigError(
                f"taskset: at most one modality may have the role 'base', got {[m.name for m in bases]}"
            )
        if noise is not None and not isinstance(noise, NoiseSchedule):
            raise ConfigError(f"taskset: noise must be a NoiseSchedule, got {type(noise).__name__}")
        self._noise = noise if noise is not None else NoiseSchedule.linear(1000)
        self._modalities = {m.name: m for m in mods}
        self._base = bases[0] if bases else None
        self._given_latent = latent_shape is not None
        self._base_latent = LatentSpec(self._resolve_latent(latent_shape))
        self._aux = resolve_aux(aux_channels, self._base is not None, self.aggregated)
        C, H, W = self._base_latent.shape
        self._latent = LatentSpec(_latent_shape([C + self._aux, H, W], "taskset: the latent with aux_channels"))
        self._known_input, self._known_dropout = resolve_known(known_input, known_dropout, self.aggregated)
        self._aux_eps = resolve_aux_eps(aux_eps, self._aux, pinned)
        self._encoding_scales = resolve_encoding_scales(encoding_scale, self.aggregated)
        # Built eagerly: a weight schedule that is invalid on this noise schedule fails here, naming its modality.
        self._fp = ForwardProcess(self._noise, {m.name: m.weights for m in self.aggregated})
        for name, ratio in self.peak_ratios().items():
            if self._aux == 0 and self._base is not None and ratio > PEAK_RATIO_BOUND:
                warnings.warn(
                    f"taskset: modality {name!r} reaches lambda_t / sqrt(abar_t) = {ratio:.2f} (above "
                    f"{PEAK_RATIO_BOUND:g}) on the base's own channels (aux_channels = 0): its encoding outweighs the "
                    "image signal and amplifies errors in the base estimate; ratios this large were not measured. "
                    "Bound the ratio with a 'ratio' weight schedule or give the encodings channels of their own "
                    "(aux_channels > 0); docs/math.md, section 2.",
                    stacklevel=2)

    def _resolve_latent(self, given: tuple[int, int, int] | None) -> tuple[int, int, int]:
        base = self._base
        inferred = base.latent_shape() if base is not None else None
        if base is not None and inferred is not None:
            inferred = _latent_shape(inferred, f"taskset: base modality {base.name!r} latent_shape()")
        if given is not None:
            given = _latent_shape(given, "taskset: latent_shape")
            if base is not None and inferred is not None and given != inferred:
                raise ConfigError(
                    f"taskset: latent_shape {list(given)} contradicts the base modality "
                    f"{base.name!r}, which defines {list(inferred)}; drop latent_shape or make them agree"
                )
            return given
        if inferred is None:
            who = (f"the base modality {self._base.name!r} defines none" if self._base is not None
                   else "no modality has the role 'base'")
            raise ConfigError(f"taskset: latent_shape [C, H, W] is required because {who}")
        return inferred

    # -- views ------------------------------------------------------------------------------------
    @property
    def base(self) -> Modality | None:
        """The base modality (its encoding is z_0), or None."""
        return self._base

    @property
    def aggregated(self) -> tuple[Modality, ...]:
        """The aggregated modalities, in task-set order."""
        return tuple(m for m in self._modalities.values() if m.role is Role.AGGREGATED)

    @property
    def modalities(self) -> dict[str, Modality]:
        """Every modality by name, in task-set order (a copy)."""
        return dict(self._modalities)

    @property
    def noise(self) -> NoiseSchedule:
        """The variance schedule beta_t."""
        return self._noise

    @property
    def latent(self) -> LatentSpec:
        """The shared latent space Z (the base's channels, then the auxiliary ones)."""
        return self._latent

    @property
    def aux_channels(self) -> int:
        """A: the channels of Z only the aggregated encodings occupy (0: they share the base's channels)."""
        return self._aux

    @property
    def base_latent(self) -> LatentSpec:
        """The base's part of Z: its first C channels (all of Z when aux_channels = 0)."""
        return self._base_latent

    @property
    def encoding_latent(self) -> LatentSpec:
        """What every aggregated encoder E_i maps into: the auxiliary channels, or all of Z when aux_channels = 0."""
        _, H, W = self._base_latent.shape
        return LatentSpec((self._aux, H, W)) if self._aux else self._latent

    @property
    def known_input(self) -> bool:
        """Whether the backbone also sees the known aggregated part of z_t (channels of their own beside z_t)."""
        return self._known_input

    @property
    def aux_eps(self) -> AuxEps:
        """Where eps_theta's auxiliary channels come from: "network" (the backbone) or "heads" (implied)."""
        return self._aux_eps

    @property
    def encoding_scales(self) -> dict[str, EncodingScaleKind]:
        """Aggregated name -> how the model scales its encodings: "rms" or "spread" (about its running mean)."""
        return dict(self._encoding_scales)

    @property
    def known_dropout(self) -> float:
        """With ``known_input``: the probability that training hides one modality's part from that input."""
        return self._known_dropout

    def peak_ratios(self) -> dict[str, float]:
        """Aggregated name -> max_t lambda_t / sqrt(abar_t): its encoding's largest part of z_t relative to the
        base's signal (docs/math.md, section 2)."""
        fp = self._fp
        return {name: peak_ratio(fp.lam[i], fp.abar) for i, name in enumerate(fp.names)}

    def forward_process(self) -> ForwardProcess:
        """The forward process (noise schedule + every aggregated modality's w_t, lambda_t); built once."""
        return self._fp

    def __getitem__(self, name: str) -> Modality:
        try:
            return self._modalities[name]
        except KeyError:
            raise KeyError(
                f"taskset has no modality {name!r}{closest(name, list(self._modalities))}; "
                f"it has {list(self._modalities)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._modalities

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskSet) and other.to_config() == self.to_config()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_config(), sort_keys=True))

    def __repr__(self) -> str:
        mods = ", ".join(f"{m.name}:{m.kind}/{m.role.value}" for m in self._modalities.values())
        return f"TaskSet([{mods}], latent={list(self._latent.shape)}, aux_channels={self._aux}, T={self._noise.T})"

    # -- configuration ------------------------------------------------------------------------------
    def to_config(self) -> ConfigDict:
        """A plain JSON/TOML-representable dict; :meth:`from_config` rebuilds an equal task set."""
        out: ConfigDict = {
            "modalities": [m.to_config() for m in self._modalities.values()],
            "diffusion": self._noise.to_config(),
        }
        if self._given_latent or self._base is None or self._base.latent_shape() is None:
            out["latent_shape"] = list(self._base_latent.shape)
        if self._base is not None and self.aggregated:  # every option written out: the config pins the design
            out["aux_channels"] = self._aux
        if self._aux:
            out["aux_eps"] = self._aux_eps
        if self.aggregated:
            out["known_input"] = self._known_input
            out["encoding_scale"] = encoding_scale_config(self._encoding_scales)
        if self._known_input:
            out["known_dropout"] = self._known_dropout
        return out

    @classmethod
    def from_config(cls, config: ConfigMapping, registry: Registry | None = None, *, saved: bool = False) -> TaskSet:
        """Build a task set from :meth:`to_config`'s format.

        Args:
            config: {"modalities": [modality configs with "kind"], "diffusion": {...}, "latent_shape": [C, H, W]};
                a ready Modality instance may stand in for a modality config. Options left out come from the
                modalities' kinds' designs.
            registry: the plugin registry that builds modalities by kind (default: ``get_registry()``).
            saved: the config is a saved one (a checkpoint's): an option it leaves out takes the value it had when
                it was left out (``saved_taskset_config``; a modality's, its kind's ``former_defaults``), and
                retired values load as they were.

        Raises:
            ConfigError: an unknown or missing key (with the nearest valid key), a malformed modality list,
                an unknown modality kind; every message names the offending key or list index.
        """
        if not isinstance(config, Mapping):
            raise ConfigError(f"taskset: expected a table/dict, got {type(config).__name__}")
        for key in config:
            if key not in CONFIG_KEYS:
                raise ConfigError(
                    f"taskset: unknown key {key!r}{closest(str(key), CONFIG_KEYS)}; valid keys: {list(CONFIG_KEYS)}"
                )
        if registry is None:
            from mtd_core.plugins.registry import get_registry

            registry = get_registry()
        if saved:
            config = saved_taskset_config(dict(config), registry)
        if "modalities" not in config:
            raise ConfigError("taskset: missing key 'modalities' (a list of modality configs, each with a 'kind')")
        raw = config["modalities"]
        if isinstance(raw, (str, Mapping)) or not isinstance(raw, Sequence):
            raise ConfigError(f"taskset: 'modalities' must be a list of modality configs, got {type(raw).__name__}")
        mods = []
        for i, mc in enumerate(raw):
            if isinstance(mc, Modality):
                mods.append(mc)
                continue
            if not isinstance(mc, Mapping):
                raise ConfigError(f"taskset: modalities[{i}] must be a table/dict, got {type(mc).__name__}")
            if "kind" not in mc:
                raise ConfigError(f"taskset: modalities[{i}] has no 'kind' (e.g. kind = \"image\"); keys: {sorted(mc)}")
            mc = dict(mc)
            try:
                if mc.get("weights") is not None:  # by the registry's weight schedules, plugins' included
                    kinds = registry.table("weight_schedule")
                    check_weights(mc["weights"], str(mc.get("name", mc["kind"])), kinds)
                    mc["weights"] = weight_schedule_from_config(dict(mc["weights"]), str(mc.get("name", mc["kind"])),
                                                                kinds)
                mods.append(registry.build_modality(mc))
            except (ConfigError, ScheduleError, PluginError) as e:
                raise type(e)(f"taskset: modalities[{i}] (kind {mc['kind']!r}): {e}") from e
        noise = noise_from_config(config.get("diffusion"), registry.table("noise_schedule"))
        latent = config.get("latent_shape")
        return cls(mods, noise, None if latent is None else _latent_shape(latent, "taskset: latent_shape"),
                   config.get("aux_channels"), config.get("known_input"), config.get("known_dropout"),
                   config.get("aux_eps"), config.get("encoding_scale"), pinned=saved)

    @classmethod
    def from_toml(cls, path: str | Path, registry: Registry | None = None) -> TaskSet:
        """Read a task set from a TOML file: either the task set at the top level or in a ``[taskset]`` table."""
        path = Path(path)
        data = read_toml(path, "taskset")
        table = data.get("taskset", data)
        try:
            return cls.from_config(table, registry)
        except MTDError as e:
            raise type(e)(f"{path}: {e}") from e

    def to_toml(self, path: str | Path | None = None) -> str:
        """The config as TOML text (written to ``path`` if given). None-valued options are omitted, so they
        take their default (None) when read back."""
        text = dumps_toml(self.to_config())
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text


__all__ = ["AUX_EPS", "DEFAULT_KNOWN_DROPOUT", "ENCODING_SCALES", "AuxEps", "EncodingScaleKind", "TaskSet"]
