"""The ``label`` modality: a class index in 0..K-1, aggregated into the latent through a learned embedding.

Its head reads the pooled bottleneck features and predicts logits; its likelihood is categorical (cross-entropy).
Its predicted encoding E(yhat) is the expectation of the encoding under the predicted class probabilities,
sum_k softmax_k * E(k), which is what the reverse mean mu_theta uses while the label is still uncertain.
"""

from __future__ import annotations


import attrs
import torch
import torch.nn.functional as F
from torch import nn

from mtd_core.errors import ModalityDataError
from mtd_core.modality import DataSpec, Design, FeatureSpec, HeadInput, LatentSpec, Modality, Role
from mtd_core.plugins import hookimpl
from mtd_core.types import Prediction
from mtd_core.plugins.validate import optional_names
from mtd_plugins.bounds import MAX_CLASSES, MAX_WIDTH, int_in


class LabelEncoder(nn.Module):
    """E(y): one learned vector per class (an nn.Embedding of width C*H*W), reshaped to the latent.

    Args:
        num_classes: the number of classes K.
        latent: the latent space Z.
    """

    def __init__(self, num_classes: int, latent: LatentSpec) -> None:
        super().__init__()
        self.shape = tuple(latent.shape)
        self.embed = nn.Embedding(num_classes, latent.numel)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """(B,) int64 class indices -> (B, C, H, W) (before the model's scaling)."""
        return self.embed(y).reshape(-1, *self.shape)

    def table(self) -> torch.Tensor:
        """Every class's raw encoding, (K, C, H, W)."""
        return self.embed.weight.reshape(-1, *self.shape)


@attrs.frozen
class LabelConfig:
    """Options of the label modality.

    Attributes:
        num_classes: the number of classes K; data are int64 in 0..K-1.
        hidden: width of the head's hidden layer (an MLP on pooled features -> K logits).
        class_names: optional display names, one per class (captions, sample grids); default "0".."K-1".
    """

    num_classes: int = attrs.field(default=10, validator=int_in(1, MAX_CLASSES))
    hidden: int = attrs.field(default=128, validator=int_in(1, MAX_WIDTH))
    class_names: tuple[str, ...] | None = attrs.field(default=None, converter=optional_names)

    def __attrs_post_init__(self) -> None:
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} entries, expected num_classes = {self.num_classes}"
            )


class LabelModality(Modality):
    """A class label, int64 of shape (B,) in 0..num_classes-1, aggregated through a learned class embedding.

    Options: see :class:`LabelConfig`.
    """

    kind = "label"
    roles = (Role.AGGREGATED,)
    head_input = HeadInput.POOLED
    exact_sample = True  # the head's softmax is the whole distribution of the label
    # The cross-entropy is read at every t, also where the label cannot be read from z_t: at weight 1 it is ~10 x the
    # eps loss and its gradient dominates the shared backbone's (Fashion-MNIST: joint FID 2.75 at 1, 2.18 at 0.1,
    # experiments/notes/image-label.md, "The label's loss weight and where its window opens").
    default_loss_weight = 0.1
    # the backbone is told the label it generates for (drawn first) or is given, its encoding on a channel of its own
    # whose noise the head implies, a tenth of the head's gradient into the backbone, a given label guided
    # classifier-free at 1.5 (docs/models.md, "Defaults and why")
    design = Design(known_input=True)
    Config = LabelConfig

    def data_spec(self) -> DataSpec:
        return DataSpec((), "int64", 0, self.config.num_classes - 1)

    def class_names(self) -> list[str] | None:
        """The ``class_names`` option (None when not given: grids then use the dataset's names, or the index)."""
        return list(self.config.class_names) if self.config.class_names is not None else None

    def build_encoder(self, latent: LatentSpec) -> nn.Module:
        """A LabelEncoder: one learned latent-shaped vector per class."""
        return LabelEncoder(self.config.num_classes, latent)

    def build_head(self, latent: LatentSpec, features: FeatureSpec) -> nn.Module:
        """An MLP from the pooled features to K logits."""
        return nn.Sequential(nn.Linear(features.pooled_dim, self.config.hidden), nn.SiLU(),
                             nn.Linear(self.config.hidden, self.config.num_classes))

    def _logits(self, pred: Prediction) -> torch.Tensor:
        k = self.config.num_classes
        if not isinstance(pred, torch.Tensor) or pred.ndim != 2 or pred.shape[1] != k:
            got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
            raise ModalityDataError(f"modality {self.name!r} (label): expected logits of shape (B, {k}), got {got}")
        return pred

    def loss(self, pred: Prediction, x: torch.Tensor) -> torch.Tensor:
        """Cross-entropy -log softmax(logits)[x] per example, in nats."""
        return F.cross_entropy(self._logits(pred).float(), x, reduction="none")

    def predicted_encoding(self, encoder: nn.Module, pred: Prediction) -> torch.Tensor:
        """E[E(y) | z_t] = sum_k softmax(logits)_k E(k): exactly the expected encoding under the head's class
        probabilities (the encoding of class k when the prediction is certain)."""
        if not isinstance(encoder, LabelEncoder):
            raise ModalityDataError(
                f"modality {self.name!r} (label): predicted_encoding needs the LabelEncoder built by build_encoder, "
                f"got {type(encoder).__name__}"
            )
        logits = self._logits(pred)
        table = encoder.table()
        probs = torch.softmax(logits.to(table.dtype), dim=1)
        return torch.einsum("bk,k...->b...", probs, table)

    def temper(self, pred: Prediction, temperature: float) -> torch.Tensor:
        """The logits divided by ``temperature`` (softmax(logits / temperature): sharper below 1)."""
        return self._logits(pred) / temperature

    def sample(self, pred: Prediction, *, greedy: bool = False, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """The most probable class (greedy), else a draw from the categorical softmax(logits); int64 (B,)."""
        logits = self._logits(pred).detach().float()
        if greedy:
            return logits.argmax(dim=1)
        probs = torch.softmax(logits, dim=1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@hookimpl
def mtd_register_modalities() -> list[type[Modality]]:
    """The label modality."""
    return [LabelModality]
