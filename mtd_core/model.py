"""MultiTaskModel: one shared backbone, one encoder E_i per modality and one decoder head per aggregated modality.

    encode(batch)   -> z_0 (the base's encoding, zeros without a base) and {i: E_i(x_i)} for aggregated i
    forward(z_t, t) -> DenoiserOutput(eps_theta(z_t, t), {i: head_i(features)})
    forward(z_t, t, known=k_t) -> the same with the known aggregated part k_t as input (TaskSet ``known_input``)
    loss(batch)     -> the multi-task training loss (mtd_core/diffusion/loss.py)

Where encodings live in Z (TaskSet ``aux_channels``): the base's encoding fills the first C channels of z_0 and every
aggregated encoding the last A (zero elsewhere), or, with A = 0, both share the same C channels. With the task
set's ``known_input`` the backbone is built for twice Z's channels: z_t, then the known part k_t = sum_j
lambda_t^(j) E_j of the modalities a sampler knows (zeros for the others); the eps it returns for the second half
is not used (docs/math.md, section 4). Each aggregated encoding is divided by its RMS, or centred and divided by its
spread (:class:`EncodingScale`, the task set's ``encoding_scale``) unless its modality's ``normalize`` option is
off, so that the weight schedule alone sets its strength; the map is fixed at sampling time, which keeps the
predicted encoding a posterior mean (docs/math.md, section 2).

The model implements the :class:`mtd_core.diffusion.elbo.Denoiser` protocol, so the ELBO and the samplers take it
directly. It never moves itself to a device: callers do (``model.to(device)``), and batches are moved to the
device of the model's parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from mtd_core.types import Batch, BatchValue, ConfigDict, ConfigMapping, DenoiserOutput, Prediction
from mtd_core.diffusion.forward import ForwardProcess
from mtd_core.diffusion.loss import LossOutput, training_loss
from mtd_core.errors import ConfigError, ModalityDataError, closest
from mtd_core.modality import HeadInput, LatentSpec, Modality, Role
from mtd_core.outputs import check_encoding, checked_head
from mtd_core.encoding_scale import EncodingScale
from mtd_core.taskset import TaskSet
from mtd_core.tomlio import plain

if TYPE_CHECKING:
    from mtd_core.plugins.registry import Registry

CONFIG_KEYS = ("taskset", "backbone", "backbone_options")


class MultiTaskModel(nn.Module):
    """The MT-Diffusion network: shared backbone + per-modality encoders and heads.

    Args:
        taskset: the modalities, noise schedule and latent space. Modalities that need fitting (e.g. a text
            tokenizer) must be fitted or have their assets loaded before the model is built.
        backbone: a registered backbone name (built as ``factory(taskset.latent, **backbone_options)``) or a
            ready ``nn.Module`` with ``feature_spec`` whose ``forward(z_t, t)`` returns a BackboneOutput.
        backbone_options: options of the named backbone (e.g. the U-Net's ``channels``); must be None or
            empty when ``backbone`` is a module.
        registry: the plugin registry used to look the backbone up (default: ``get_registry()``).

    Attributes:
        taskset: the task set.
        backbone: the shared denoising network.
        encoders: ``nn.ModuleDict`` name -> E_i for every modality (the base's is usually the identity).
        heads: ``nn.ModuleDict`` name -> decoder head for every aggregated modality.
    """

    def __init__(self, taskset: TaskSet, backbone: str | nn.Module = "unet",
                 backbone_options: ConfigMapping | None = None, registry: Registry | None = None) -> None:
        super().__init__()
        if not isinstance(taskset, TaskSet):
            raise ConfigError(f"MultiTaskModel: taskset must be a TaskSet, got {type(taskset).__name__}")
        self.taskset = taskset
        self.backbone_options = dict(backbone_options or {})
        if isinstance(backbone, str):
            if registry is None:
                from mtd_core.plugins.registry import get_registry

                registry = get_registry()
            self.backbone_name: str | None = backbone
            self.backbone = registry.backbone(backbone)(self.backbone_latent, **self.backbone_options)
        elif isinstance(backbone, nn.Module):
            if self.backbone_options:
                raise ConfigError("MultiTaskModel: backbone_options apply to a backbone name, not a ready module")
            self.backbone_name = None
            self.backbone = backbone
        else:
            raise ConfigError(f"MultiTaskModel: backbone must be a name or an nn.Module, got {type(backbone).__name__}")
        features = getattr(self.backbone, "feature_spec", None)
        if features is None:
            raise ConfigError(f"MultiTaskModel: backbone {backbone!r:.60} has no 'feature_spec' attribute")
        self.feature_spec = features

        latent = taskset.encoding_latent
        self.encoders = nn.ModuleDict({
            name: m.build_encoder(taskset.base_latent if m.role is Role.BASE else latent)
            for name, m in taskset.modalities.items()})
        for name, m in taskset.modalities.items():
            if not m.train_encoder:  # a fixed code of the data (Modality ``train_encoder``)
                self.encoders[name].requires_grad_(False)
        self.scales = nn.ModuleDict({m.name: EncodingScale(taskset.encoding_scales[m.name], latent.shape)
                                     for m in taskset.aggregated if getattr(m.config, "normalize", True)})
        self.heads = nn.ModuleDict()
        for m in taskset.aggregated:
            if m.head_input is HeadInput.NONE:
                raise ConfigError(f"modality {m.name!r} (kind {m.kind!r}) is aggregated but reads no features "
                                  "(head_input 'none')")
            head = m.build_head(latent, features)
            if head is None:
                raise ConfigError(f"modality {m.name!r} (kind {m.kind!r}) is aggregated but build_head returned None")
            self.heads[m.name] = head

    # -- views ------------------------------------------------------------------------------------
    @property
    def forward_process(self) -> ForwardProcess:
        """The task set's (full, not respaced) forward process."""
        return self.taskset.forward_process()

    @property
    def backbone_latent(self) -> LatentSpec:
        """What the backbone takes: Z, or Z and the known part side by side (TaskSet ``known_input``)."""
        C, H, W = self.taskset.latent.shape
        return LatentSpec((2 * C, H, W)) if self.taskset.known_input else self.taskset.latent

    @property
    def modalities(self) -> dict[str, Modality]:
        """Every modality by name, in task-set order."""
        return self.taskset.modalities

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters (CPU for a model without parameters)."""
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    # -- the denoiser ---------------------------------------------------------------------------------
    def to_device(self, batch: Mapping[str, BatchValue]) -> Batch:
        """``batch`` with every tensor moved to the model's device (other values, e.g. raw captions, kept)."""
        dev = self.device
        return {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def encode(self, batch: Mapping[str, BatchValue], *, validate: bool = True
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """z_0 and {aggregated name -> E_i(x_i)} for ``batch`` (name -> data for every modality).

        Each modality's data is checked with ``Modality.validate`` first (``validate=False`` skips it); the error
        names the modality. Without a base, z_0 is zeros of the latent shape.
        """
        missing = [n for n in self.taskset.modalities if n not in batch]
        if missing:
            raise ModalityDataError(
                f"batch is missing modalities {missing}; it has keys {sorted(batch)} and the task set needs "
                f"{list(self.taskset.modalities)}"
            )
        return self.encode_some(batch, list(self.taskset.modalities), validate=validate)

    def encode_some(self, batch: Mapping[str, BatchValue], names: list[str], *, validate: bool = True
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Like :meth:`encode` for the modalities ``names`` only (the observed ones, when generating).

        Returns z_0 (zeros when the base is not among ``names``) and the encodings of the aggregated ``names``.
        """
        sizes = {n: len(batch[n]) for n in names}
        if len(set(sizes.values())) > 1:
            raise ModalityDataError(f"modalities of one batch must have the same batch size, got {sizes}")
        dev = self.device
        z0 = None
        enc: dict[str, torch.Tensor] = {}
        for name in names:
            m = self.taskset[name]
            x = batch[name]
            if validate:
                m.validate(x)
            x = x.to(dev) if isinstance(x, torch.Tensor) else x
            e = m.encode(self.encoders[name], x)
            if m.role is Role.BASE:
                z0 = self._place(name, e, base=True, batch=sizes[name])
            else:
                enc[name] = self._place(name, e, batch_stats=self.training, batch=sizes[name])
        if z0 is None:
            B = next(iter(sizes.values()), 0)
            z0 = torch.zeros(B, *self.taskset.latent.shape, device=dev)
        return z0, enc

    def _place(self, name: str, e: torch.Tensor, *, base: bool = False, batch_stats: bool = False,
               batch: int | None = None, what: str = "its encoder returned") -> torch.Tensor:
        """An encoder's output checked (outputs.py), scaled (aggregated) and put in its channels of Z (zeros
        elsewhere)."""
        ts = self.taskset
        part = ts.base_latent if base else ts.encoding_latent
        check_encoding(ts[name], e, batch, part.shape, self._dtypes(e), what)
        if not base and name in self.scales:
            e = self.scales[name](e, batch_stats)
        if ts.aux_channels == 0:
            return e
        zeros = e.new_zeros(e.shape[0], ts.latent.shape[0] - e.shape[1], *e.shape[2:])
        return torch.cat([e, zeros] if base else [zeros, e], dim=1)

    def _dtypes(self, e: object) -> frozenset[torch.dtype]:
        """The dtypes an encoding may have: the parameters' and, under autocast, the autocast dtype."""
        p = next((p for p in self.parameters() if p.is_floating_point()), None)
        out = {p.dtype if p is not None else torch.get_default_dtype()}
        kind = e.device.type if isinstance(e, torch.Tensor) else "cpu"
        if torch.is_autocast_enabled(kind):
            out.add(torch.get_autocast_dtype(kind))
        return frozenset(out)

    def base_part(self, z: torch.Tensor) -> torch.Tensor:
        """The base's channels of a latent batch (all of it when aux_channels = 0)."""
        return z[:, : self.taskset.base_latent.shape[0]]

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, known: torch.Tensor | None = None) -> DenoiserOutput:
        """eps_theta(z_t, t) and every aggregated modality's head prediction; ``t`` holds original timesteps (B,).

        ``known``: the known aggregated part of z_t, sum_j lambda_t^(j) E_j(x_j) over the modalities whose data
        the caller knows, shaped like z_t (None: nothing known). Read only by a task set with ``known_input``."""
        if self.taskset.known_input:
            known = torch.zeros_like(z_t) if known is None else known.to(z_t.dtype)
            out = self.backbone(torch.cat([z_t, known], dim=1), t)
            eps = out.eps[:, : z_t.shape[1]]
        else:
            out = self.backbone(z_t, t)
            eps = out.eps
        preds = {}
        for m in self.taskset.aggregated:
            features = out.pooled if m.head_input is HeadInput.POOLED else out.fmap
            if m.head_grad != 1.0:  # the same features; the head's gradient reaches the backbone scaled
                fixed = features.detach()
                features = fixed + m.head_grad * (features - fixed)
            preds[m.name] = checked_head(m, self.heads[m.name], features)
        if self.taskset.aux_eps == "heads":
            eps = self._aux_eps_from_heads(z_t, t, eps, preds)
        return DenoiserOutput(eps=eps, preds=preds)

    def _aux_eps_from_heads(self, z_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                            preds: Mapping[str, Prediction]) -> torch.Tensor:
        """eps with its auxiliary channels replaced by what the heads imply (TaskSet ``aux_eps = "heads"``): z_0 is
        zero there, so z_aux = sum_i lambda_t^(i) E_i + sqrt(1 - abar_t) eps_aux, and the posterior mean of
        eps_aux is (z_aux - sum_i lambda_t^(i) E[E_i | z_t]) / sqrt(1 - abar_t) (docs/math.md, section 2)."""
        fp, C = self.forward_process, self.taskset.base_latent.shape[0]
        implied = fp.eps_from_z0(z_t, torch.zeros_like(z_t), self.predicted_encodings(preds), t)
        return torch.cat([eps[:, :C], implied[:, C:].to(eps.dtype)], dim=1)

    def predicted_encodings(self, preds: Mapping[str, Prediction]) -> dict[str, torch.Tensor]:
        """E[E_i(x_i) | z_t] for every head prediction (``Modality.predicted_encoding``), scaled by the running RMS
        and placed in Z: the encodings of the reverse mean mu_theta and of every sampler step."""
        return {name: self._place(name, self.taskset[name].predicted_encoding(self.encoders[name], pred),
                                  what="its predicted_encoding returned") for name, pred in preds.items()}

    def parts(self) -> dict[str, list[nn.Parameter]]:
        """The trainable parameters by part: "backbone", then each modality's encoder and head under its name (the
        Trainer's ``grad_clip_scope = "part"`` clips each part's gradient norm apart)."""
        out: dict[str, list[nn.Parameter]] = {"backbone": [p for p in self.backbone.parameters() if p.requires_grad]}
        for name in self.modalities:
            own = [*(self.encoders[name].parameters() if name in self.encoders else ()),
                   *(self.heads[name].parameters() if name in self.heads else ())]
            if any(p.requires_grad for p in own):
                out[name] = [p for p in own if p.requires_grad]
        seen = {id(p) for ps in out.values() for p in ps}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in seen]
        if rest:  # anything a subclass adds
            out["other"] = rest
        return out

    def loss(self, batch: Mapping[str, BatchValue], kind: str = "simple", generator: torch.Generator | None = None,
             *, t: torch.Tensor | None = None, eps: torch.Tensor | None = None,
             hide: torch.Tensor | None = None) -> LossOutput:
        """The multi-task training loss of ``batch`` ("simple" or "vlb"); see mtd_core/diffusion/loss.py.

        Args:
            batch: name -> data for every modality (moved to the model's device).
            kind: "simple" (eps MSE + heads' NLL) or "vlb" (T * L_{t-1} + heads' NLL).
            generator: the RNG for t ~ U{1..T} and eps (on its own device; moved to the model's).
            t, eps, hide: fixed timesteps (B,), noise and (with ``known_input``) the draws deciding which known
                parts are hidden (``training_loss``): the trainer draws them for the global batch.
        """
        batch = self.to_device(batch)
        ts = self.taskset
        return training_loss(self.forward_process, self, ts.modalities, batch, self.encode, kind=kind, t=t, eps=eps,
                             generator=generator, known_dropout=ts.known_dropout if ts.known_input else None,
                             hide=hide)

    # -- configuration --------------------------------------------------------------------------------
    def config(self) -> ConfigDict:
        """{"taskset": ..., "backbone": name, "backbone_options": {...}}: JSON-representable; rebuilt by
        :meth:`from_config` (weights are saved separately, see mtd_core/training/checkpoint.py)."""
        if self.backbone_name is None:
            raise ConfigError(
                "MultiTaskModel.config(): the backbone was given as a module, which has no config; "
                "register it as a backbone plugin and pass its name instead"
            )
        return {"taskset": self.taskset.to_config(), "backbone": self.backbone_name,
                "backbone_options": plain(self.backbone_options)}

    def assets(self) -> dict[str, dict[str, bytes]]:
        """Every modality's non-tensor state (e.g. a tokenizer), by modality name; empty ones left out."""
        out = {name: dict(m.assets()) for name, m in self.taskset.modalities.items()}
        return {k: v for k, v in out.items() if v}

    @classmethod
    def from_config(cls, config: ConfigMapping, registry: Registry | None = None,
                    assets: Mapping[str, Mapping[str, bytes]] | None = None, *, saved: bool = False
                    ) -> MultiTaskModel:
        """Rebuild a model (freshly initialised) from :meth:`config`'s dict.

        Args:
            config: {"taskset": {...}, "backbone": "unet", "backbone_options": {...}}.
            registry: builds modalities and the backbone (default: ``get_registry()``).
            assets: modality name -> its saved assets, loaded before the networks are built (needed e.g. by
                a text modality, whose head size depends on its tokenizer).
            saved: the config is a checkpoint's: its task set is read as it was saved (``TaskSet.from_config``).
        """
        if not isinstance(config, Mapping):
            raise ConfigError(f"model config: expected a dict, got {type(config).__name__}")
        for key in config:
            if key not in CONFIG_KEYS:
                raise ConfigError(f"model config: unknown key {key!r}{closest(str(key), CONFIG_KEYS)}; "
                                  f"valid keys: {list(CONFIG_KEYS)}")
        if "taskset" not in config:
            raise ConfigError("model config: missing key 'taskset'")
        if registry is None:
            from mtd_core.plugins.registry import get_registry

            registry = get_registry()
        taskset = TaskSet.from_config(config["taskset"], registry, saved=saved)
        for name, a in (assets or {}).items():
            if name not in taskset:
                raise ConfigError(f"model assets: no modality {name!r} in the task set"
                                  f"{closest(name, list(taskset.modalities))}")
            taskset[name].load_assets(a)
        backbone = config.get("backbone", "unet")
        if not isinstance(backbone, str):
            raise ConfigError(f"model config: 'backbone' must be a registered name, got {backbone!r}")
        return cls(taskset, backbone, config.get("backbone_options") or {}, registry)


__all__ = ["EncodingScale", "MultiTaskModel"]
