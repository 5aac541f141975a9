"""Design: the training and sampling design a modality kind was measured best with (``Modality.design``).

A task set or a modality config that is silent about an option takes it from its kinds' designs, so that a minimal
config, a Python composition, ``mtd demo``, the example configs and the experiments build one and the same model:
the one every claim in docs/results.md is measured on. Each field says what it sets; docs/models.md, "Defaults and
why", gives the evidence behind each built-in's values.
"""

from __future__ import annotations

from typing import Literal

import attrs

EncodingScaleKind = Literal["rms", "spread"]
ENCODING_SCALES: tuple[EncodingScaleKind, ...] = ("rms", "spread")


def _share(inst: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"Design.{attribute.name} must be a number in [0, 1], got {value!r}")


def _channels(inst: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Design.{attribute.name} must be an integer >= 0, got {value!r}")


def _flag(inst: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"Design.{attribute.name} must be True or False, got {value!r}")


def _scale(inst: object, attribute: attrs.Attribute, value: object) -> None:
    if value not in ENCODING_SCALES:
        raise ValueError(f"Design.encoding_scale must be one of {list(ENCODING_SCALES)}, got {value!r}")


def _guidance(inst: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1.0 <= value < float("inf"):
        raise ValueError(f"Design.cfg_scale must be a finite number >= 1 (1: no guidance), got {value!r}")


@attrs.frozen(kw_only=True)
class Design:
    """What a kind's aggregated modality is measured best with; the defaults are the built-ins' common design.

    Attributes:
        own_channels: channels of Z of their own for its encodings (the task set's ``aux_channels`` is the
            largest among its aggregated kinds; 0 would put them on the base's channels, the paper's shared
            design). Their noise estimate is implied by the heads (``aux_eps = "heads"``).
        head_grad: the share of its head's loss gradient that reaches the shared backbone (the modality's
            ``head_grad`` when its config gives none).
        known_input: whether the backbone is told this modality's known part of z_t (the task set turns
            ``known_input`` on when any of its aggregated kinds asks for it); with it, a given value of this kind
            is guided classifier-free at ``cfg_scale``.
        encoding_scale: how the model scales its encodings before w_t weighs them: "rms" or "spread" (about a
            running mean; for a fixed random code whose examples differ little, e.g. a caption's).
        train_encoder: whether training updates its encoder E_i (False: a fixed random code of the data).
        cfg_scale: the classifier-free guidance scale of a conditional run given this modality, where the task set
            trained the untold path (``known_input``); 1 turns guidance off.
    """

    own_channels: int = attrs.field(default=1, validator=_channels)
    head_grad: float = attrs.field(default=0.1, validator=_share)
    known_input: bool = attrs.field(default=False, validator=_flag)
    encoding_scale: EncodingScaleKind = attrs.field(default="rms", validator=_scale)
    train_encoder: bool = attrs.field(default=True, validator=_flag)
    cfg_scale: float = attrs.field(default=1.5, validator=_guidance)


__all__ = ["Design", "ENCODING_SCALES", "EncodingScaleKind"]
