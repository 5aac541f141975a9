"""A frozen diffusers ``AutoencoderKL`` read from a local folder: what the ``latent_image`` modality encodes with.

:func:`read_autoencoder` reads the folder's ``config.json`` and fingerprints its files without importing diffusers
(a config can be shown and checked cheaply); :class:`FrozenAutoencoder` loads the weights on first use
(``from_pretrained`` with ``local_files_only``: nothing is downloaded), keeps them in eval mode without gradients,
and maps images in [-1, 1] to z_0 = scaling_factor * (E(x) - shift_factor) and back. :class:`LatentCodec` is the
base's encoder module the model owns: it holds the autoencoder as a plain attribute, so the autoencoder is neither
a parameter (optimiser, EMA, DDP) nor a tensor of the model's safetensors weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Literal

import attrs
import torch
from torch import nn

from mtd_core.errors import ConfigError

CONFIG_FILE = "config.json"
WEIGHTS_PREFIX = "diffusion_pytorch_model"
INSTALL = 'pip install "mtd[bench]" (or pip install diffusers)'
Posterior = Literal["mean", "sample"]
_FINGERPRINTS: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


@attrs.frozen
class AutoencoderInfo:
    """What a folder's config.json says about its AutoencoderKL, and the fingerprint of its files.

    Attributes:
        folder: the absolute folder.
        in_channels, out_channels: the image channels it encodes and decodes.
        latent_channels: the channels of its latent.
        factor: its down-sampling factor, 2 ** (len(block_out_channels) - 1) (every encoder block but the last
            halves the size).
        scaling_factor, shift_factor: z_0 = scaling_factor * (E(x) - shift_factor) (shift 0 when unset).
        fingerprint: SHA-256 of config.json and the weight files (names and bytes).
    """

    folder: Path
    in_channels: int
    out_channels: int
    latent_channels: int
    factor: int
    scaling_factor: float
    shift_factor: float
    fingerprint: str


def require_diffusers(who: str) -> None:
    """A ConfigError naming the install command when diffusers is not installed (it is an optional extra)."""
    if importlib.util.find_spec("diffusers") is None:
        raise ConfigError(f"{who}: the latent image modality needs diffusers, which is not installed: {INSTALL}")


def _files(folder: Path) -> list[Path]:
    """config.json and the weight files, sorted by name."""
    weights = sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith(WEIGHTS_PREFIX))
    return [folder / CONFIG_FILE, *weights]


def fingerprint(folder: Path) -> str:
    """SHA-256 over the names and bytes of config.json and the weight files (cached while sizes and mtimes hold)."""
    files = _files(folder)
    key = (str(folder), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        for p in files:
            h.update(p.name.encode() + b"\0")
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        _FINGERPRINTS[key] = h.hexdigest()
    return _FINGERPRINTS[key]


def _positive_int(config: dict[str, Any], key: str, where: str) -> int:  # Any: config.json's values, checked here
    v = config.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{where}: '{key}' must be a positive integer, got {v!r}")
    return v


def read_autoencoder(folder: str | os.PathLike[str], who: str) -> AutoencoderInfo:
    """The AutoencoderKL of ``folder`` as its config.json describes it (diffusers is not imported).

    Raises a ConfigError naming ``who``, the folder and the reason when the folder, its config or its weights are
    missing, or the config is not an AutoencoderKL's.
    """
    path = Path(folder).expanduser().absolute()
    where = f"{who}: option 'vae': {path}"
    if not path.is_dir():
        raise ConfigError(f"{where}: no such folder (expected a diffusers AutoencoderKL saved with save_pretrained)")
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}: does not load as an AutoencoderKL: cannot read {CONFIG_FILE} "
                          f"({type(e).__name__}: {e})") from None
    if not isinstance(config, dict) or config.get("_class_name") != "AutoencoderKL":
        got = config.get("_class_name") if isinstance(config, dict) else type(config).__name__
        raise ConfigError(f"{where}: does not load as an AutoencoderKL: {CONFIG_FILE} names class {got!r}")
    if len(_files(path)) < 2:
        raise ConfigError(f"{where}: does not load as an AutoencoderKL: no weights file ({WEIGHTS_PREFIX}"
                          ".safetensors) in the folder")
    where = f"{where}/{CONFIG_FILE}"
    blocks = config.get("block_out_channels")
    if not isinstance(blocks, list) or not blocks:
        raise ConfigError(f"{where}: 'block_out_channels' must be a non-empty list, got {blocks!r}")
    scale, shift = config.get("scaling_factor", 0.18215), config.get("shift_factor")
    for key, v in (("scaling_factor", scale), ("shift_factor", 0.0 if shift is None else shift)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not abs(v) < float("inf"):
            raise ConfigError(f"{where}: '{key}' must be a finite number, got {v!r}")
    if scale <= 0:
        raise ConfigError(f"{where}: 'scaling_factor' must be > 0, got {scale!r}")
    return AutoencoderInfo(folder=path, in_channels=_positive_int(config, "in_channels", where),
                           out_channels=_positive_int(config, "out_channels", where),
                           latent_channels=_positive_int(config, "latent_channels", where),
                           factor=2 ** (len(blocks) - 1), scaling_factor=float(scale),
                           shift_factor=float(shift or 0.0), fingerprint=fingerprint(path))


class FrozenAutoencoder:
    """The autoencoder of ``info``, loaded on first use, frozen (eval mode, no gradients), moved to the device of
    what it is given. Copies share it (``copy.deepcopy`` of a model or an EMA copy does not duplicate it).

    Args:
        info: the folder's :func:`read_autoencoder`.
        posterior: "mean" encodes with the mean of the latent distribution, "sample" draws from it.
        who: names the modality in error messages.
    """

    def __init__(self, info: AutoencoderInfo, posterior: Posterior, who: str) -> None:
        self.info, self.posterior, self.who = info, posterior, who
        self._vae: Any = None  # Any: diffusers' AutoencoderKL, imported lazily (optional extra)

    def __deepcopy__(self, memo: dict[int, object]) -> FrozenAutoencoder:
        return self

    def module(self, device: torch.device) -> Any:  # Any: diffusers' AutoencoderKL (optional extra)
        """The diffusers AutoencoderKL on ``device`` (loaded and checked the first time)."""
        if self._vae is None:
            self._vae = self._load()
        if next(self._vae.parameters()).device != device:
            self._vae.to(device)
        return self._vae

    def _load(self) -> Any:  # Any: diffusers' AutoencoderKL (optional extra)
        require_diffusers(self.who)
        from diffusers import AutoencoderKL

        folder = self.info.folder
        try:
            vae = AutoencoderKL.from_pretrained(  # type: ignore[no-untyped-call]
                str(folder), local_files_only=True, low_cpu_mem_usage=False)
        except Exception as e:  # noqa: BLE001 - any failure of a plugin-external loader becomes one line
            first = (str(e).strip().splitlines() or [""])[0]
            raise ConfigError(f"{self.who}: option 'vae': {folder} does not load as an AutoencoderKL: "
                              f"{type(e).__name__}: {first}") from None
        if fingerprint(folder) != self.info.fingerprint:
            raise ConfigError(f"{self.who}: option 'vae': the files of {folder} changed since the config was read "
                              f"(fingerprint {fingerprint(folder)[:12]}..., expected {self.info.fingerprint[:12]}...)")
        vae.requires_grad_(False)
        return vae.float().eval()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, C, S, S) -> z_0 = scaling_factor * (E(x) - shift_factor), float32, no gradient."""
        vae = self.module(x.device)
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            dist = vae.encode(x.float()).latent_dist
            z = dist.mean if self.posterior == "mean" else dist.sample()
            return ((z - self.info.shift_factor) * self.info.scaling_factor).float()

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        """z_0 -> images clamped to [-1, 1], float32 (the decoder's mean, D(z_0 / scaling_factor + shift_factor))."""
        vae = self.module(z0.device)
        with torch.no_grad(), torch.autocast(z0.device.type, enabled=False):
            x = vae.decode(z0.float() / self.info.scaling_factor + self.info.shift_factor).sample
            return x.float().clamp(-1.0, 1.0)


class LatentCodec(nn.Module):
    """The latent base's encoder E (images -> z_0) and its inverse ``decode`` (z_0 -> images), which ``generate``
    uses for the base's samples. It has no parameters and no state: the frozen autoencoder is a plain attribute.

    Args:
        autoencoder: the frozen autoencoder.
    """

    def __init__(self, autoencoder: FrozenAutoencoder) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) images in [-1, 1] -> (B, C_z, S / f, S / f) z_0."""
        return self.autoencoder.encode(x)

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        """(B, C_z, h, w) z_0 -> (B, C, h f, w f) images in [-1, 1]."""
        return self.autoencoder.decode(z0)

    def extra_repr(self) -> str:
        return f"vae={str(self.autoencoder.info.folder)!r}, posterior={self.autoencoder.posterior!r}"


__all__ = ["AutoencoderInfo", "FrozenAutoencoder", "LatentCodec", "fingerprint", "read_autoencoder",
           "require_diffusers"]
