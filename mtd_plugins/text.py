"""The ``text`` modality (beyond the paper): a short caption, aggregated into the latent as mean-pooled token
embeddings and predicted back token by token from the backbone's pooled features or feature map.

Captions are tokenised by a SentencePiece BPE model trained in memory by :meth:`TextModality.fit` (tens of
milliseconds on a caption set) and saved beside the weights through :meth:`assets`. Data are int64 token ids
(B, max_len): BOS, the caption's pieces, EOS, then padding (id 0). A batch may carry raw captions as a list of
str, which :meth:`derive` tokenises. The modality makes no captions up: a dataset without them gets them from a
transform, e.g. ``[dataset] transforms = [{kind = "captions", into = "text"}]`` (mtd_plugins/captions.py:
"a bright thick three" from the label and simple statistics of the image).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from mtd_core.diffusion.weights import WeightSchedule
from mtd_core.errors import CheckpointError, ConfigError, ModalityDataError
from mtd_core.heads import MapReader
from mtd_core.modality import (
    DataSpec,
    Design,
    FeatureSpec,
    HeadInput,
    LatentSpec,
    Modality,
    Role,
)
from mtd_core.plugins import hookimpl
from mtd_core.plugins.validate import one_of, optional_names
from mtd_core.types import Batch, BatchValue, ConfigMapping, ConfigValue, Prediction
from mtd_plugins.bounds import MAX_CLASSES, MAX_WIDTH, int_in
from mtd_plugins.captions import DIGIT_NAMES, caption_grid

PAD, UNK, BOS, EOS = 0, 1, 2, 3
ASSET = "tokenizer.model"
# options of the synthesis that moved to the ``captions`` transform; dropped with a warning (old checkpoints load)
MOVED = ("source_label", "source_image")


def _clean(ids: torch.Tensor) -> torch.Tensor:
    """Token ids with every position after the first EOS set to PAD (what a caption means ends at EOS)."""
    eos = (ids == EOS).long()
    after = (eos.cumsum(-1) - eos) > 0
    return ids.masked_fill(after, PAD)


class TextEncoder(nn.Module):
    """E(text): token embeddings mean-pooled over the non-pad tokens, then a linear map into Z.

    Args:
        vocab: the tokenizer's vocabulary size V.
        embed_dim: the token embedding width D.
        latent: the latent space Z.
    """

    def __init__(self, vocab: int, embed_dim: int, latent: LatentSpec) -> None:
        super().__init__()
        self.shape = tuple(latent.shape)
        self.embed = nn.Embedding(vocab, embed_dim, padding_idx=PAD)
        self.proj = nn.Linear(embed_dim, latent.numel)

    def pool(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, D): the mean embedding of the non-pad tokens."""
        keep = (ids != PAD).unsqueeze(-1).to(self.embed.weight.dtype)
        return (self.embed(ids) * keep).sum(1) / keep.sum(1).clamp_min(1.0)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, D) pooled embeddings -> (B, C, H, W)."""
        return self.proj(pooled).reshape(-1, *self.shape)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) int64 token ids -> (B, C, H, W) (before the model's scaling)."""
        return self.project(self.pool(ids))


class TextHead(nn.Module):
    """Predicts every position's token logits (B, max_len, V) from the backbone's features.

    Args:
        net: maps the features the head reads (pooled or the feature map) to (B, max_len * V).
        max_len: the number of token positions L.
        vocab: the vocabulary size V.
    """

    def __init__(self, net: nn.Module, max_len: int, vocab: int) -> None:
        super().__init__()
        self.max_len, self.vocab = max_len, vocab
        self.net = net

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, pooled_dim) or (B, map_channels, H, W) -> (B, max_len, V) logits."""
        return self.net(features).reshape(-1, self.max_len, self.vocab)


@attrs.frozen
class TextConfig:
    """Options of the text modality.

    Attributes:
        max_len: tokens per caption including BOS and EOS; longer captions are truncated with a warning.
        vocab_size: the SentencePiece (BPE) vocabulary size (a soft limit: small caption sets may give fewer).
        embed_dim: the token embedding width of the encoder.
        hidden: the head's hidden width.
        head: the features the head reads: "pooled" (the backbone's bottleneck, an MLP) or "map" (the last
            full-resolution feature map: :class:`~mtd_core.heads.MapReader`).
        class_names: the class nouns of the fallback caption set (:meth:`TextModality.caption_grid`) the tokenizer
            is fitted on when the data give no raw captions, and example_batch draws from (default "zero".."nine").
    """

    max_len: int = attrs.field(default=12, validator=int_in(3, MAX_WIDTH))
    vocab_size: int = attrs.field(default=64, validator=int_in(8, MAX_CLASSES))
    embed_dim: int = attrs.field(default=64, validator=int_in(1, MAX_WIDTH))
    hidden: int = attrs.field(default=256, validator=int_in(1, MAX_WIDTH))
    head: str = attrs.field(default="pooled", validator=one_of("pooled", "map"))
    class_names: tuple[str, ...] | None = attrs.field(default=None, converter=optional_names)

    def __attrs_post_init__(self) -> None:
        if self.class_names is not None and not self.class_names:
            raise ValueError("option 'class_names' must list at least one noun (or be omitted), got []")


class TextModality(Modality):
    """A short caption as int64 token ids (B, max_len), padded with 0; aggregated only; needs fit() (or
    load_assets()) before its networks are built.

    Options: see :class:`TextConfig`.
    """

    kind = "text"
    roles = (Role.AGGREGATED,)
    Config = TextConfig
    # sharper token probabilities behind the encoding of every reverse step: Fashion-MNIST caption validation FID at
    # 20 NFE, the default design (a fixed code), seeds 0 / 1: 1.45 / 1.10 at 0.7 against 2.01 / 1.33 at 0.5, 3.76 / 2.18
    # at 0.25 (docs/sampling.md, the encoding temperature)
    default_encoding_temperature = 0.7
    # a fixed random code scaled by its spread (a learned code collapses to encodings that say almost nothing of the
    # caption), a hundredth of the head's gradient into the backbone (docs/models.md, "Defaults and why")
    design = Design(head_grad=0.01, encoding_scale="spread", train_encoder=False)

    def __init__(self, name: str | None = None, role: Role | str | None = None,
                 weights: WeightSchedule | ConfigMapping | None = None, loss_weight: float | None = None,
                 **options: ConfigValue) -> None:
        moved = [k for k in MOVED if k in options]
        if moved:
            warnings.warn(f"modality {name or self.kind!r} (text): option(s) {moved} are ignored: captions are no "
                          "longer synthesised by the text modality; give them in the data or add {kind = "
                          "\"captions\", label = ..., image = ..., into = ...} to [dataset] transforms", stacklevel=2)
            options = {k: v for k, v in options.items() if k not in MOVED}
        super().__init__(name=name, role=role, weights=weights, loss_weight=loss_weight, **options)
        self._model: bytes | None = None
        self._sp: Any = None  # Any: a sentencepiece.SentencePieceProcessor (untyped, imported lazily)

    @property
    def head_input(self) -> HeadInput:  # type: ignore[override]
        """HeadInput.POOLED, or HeadInput.MAP with ``head = "map"``."""
        return HeadInput.MAP if self.config.head == "map" else HeadInput.POOLED

    # -- the tokenizer --------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        """Whether the tokenizer exists (after fit() or load_assets())."""
        return self._sp is not None

    @property
    def vocab(self) -> int:
        """The tokenizer's vocabulary size V (the head's number of classes per position)."""
        return self._require("the vocabulary size", ModalityDataError).get_piece_size()

    def _require(self, what: str, error: type[Exception]) -> Any:  # Any: the processor
        if self._sp is None:
            raise error(
                f"modality {self.name!r} (text): {what} needs the tokenizer, which does not exist yet.\n"
                "Call fit(batches) (trains it on the captions) or load_assets(assets) (restores a saved one) first."
            )
        return self._sp

    def describe(self, value: torch.Tensor, class_names: Sequence[str] | None = None) -> str | None:
        """The caption the token ids spell."""
        return self.detokenize(value.unsqueeze(0).cpu())[0]

    def parse(self, text: str, class_names: Sequence[str] | None = None) -> list[str]:
        """A caption from the command line, as given (``derive`` tokenizes it)."""
        return [text]

    def class_nouns(self) -> list[str]:
        """The noun for each class in the fallback caption set."""
        return list(self.config.class_names) if self.config.class_names is not None else list(DIGIT_NAMES)

    def caption_grid(self) -> list[str]:
        """Every caption the ``captions`` transform can write with :meth:`class_nouns` (mtd_plugins/captions.py): the
        tokenizer's training set when no captions are given."""
        return caption_grid(self.class_nouns())

    def _train(self, captions: list[str]) -> None:
        import sentencepiece as spm

        writer = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(captions), model_writer=writer, model_type="bpe",
                vocab_size=self.config.vocab_size, hard_vocab_limit=False, character_coverage=1.0,
                pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, num_threads=1, minloglevel=2,
            )
        except RuntimeError as e:
            n_chars = len(set("".join(captions)))
            raise ConfigError(
                f"modality {self.name!r} (text): training the tokenizer on {len(captions)} captions failed:\n"
                f"  {str(e).strip()}\n"
                f"The captions use {n_chars} distinct characters; vocab_size = {self.config.vocab_size} must exceed "
                "that plus the 4 special tokens (pad, unk, bos, eos)."
            ) from None
        self._load(writer.getvalue())

    def _load(self, model: bytes) -> None:
        import sentencepiece as spm

        try:
            sp = spm.SentencePieceProcessor(model_proto=model)
        except RuntimeError as e:
            raise CheckpointError(
                f"modality {self.name!r} (text): assets[{ASSET!r}] ({len(model)} bytes) is not a SentencePiece "
                f"model: {str(e).strip()}"
            ) from None
        if (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) != (PAD, UNK, BOS, EOS):
            raise CheckpointError(
                f"modality {self.name!r} (text): the tokenizer's special ids (pad, unk, bos, eos) are "
                f"{(sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())}, expected {(PAD, UNK, BOS, EOS)}"
            )
        self._sp, self._model = sp, model

    def fit(self, batches: Iterable[Mapping[str, BatchValue]] | None = None) -> None:
        """Train the tokenizer on the raw captions (lists of str under this modality's name) found in ``batches``;
        when there are none, on :meth:`caption_grid` (every caption the ``captions`` transform can write)."""
        captions: list[str] = []
        for batch in batches or []:
            value = batch.get(self.name) if isinstance(batch, Mapping) else None
            if isinstance(value, (list, tuple)):
                captions += self._check_captions(value)
        self._train(captions or self.caption_grid())

    def assets(self) -> dict[str, bytes]:
        """The trained tokenizer's serialized model, {"tokenizer.model": bytes} ({} before fit)."""
        return {ASSET: self._model} if self._model is not None else {}

    def load_assets(self, assets: Mapping[str, bytes]) -> None:
        """Restore the tokenizer saved by :meth:`assets`."""
        if ASSET not in assets:
            raise CheckpointError(
                f"modality {self.name!r} (text): the assets lack {ASSET!r} (the tokenizer saved by assets() after "
                f"fit()); got keys {sorted(assets)}"
            )
        self._load(bytes(assets[ASSET]))

    def _check_captions(self, captions: Sequence[object]) -> list[str]:
        bad = [i for i, c in enumerate(captions) if not isinstance(c, str)]
        if bad:
            raise ModalityDataError(f"modality {self.name!r} (text): captions must be str; example {bad[0]} is "
                                    f"{type(captions[bad[0]]).__name__}")
        return [c for c in captions if isinstance(c, str)]  # all of them (checked above); narrowed for the checker

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions -> int64 ids (B, max_len): BOS, pieces, EOS, PAD... Captions longer than max_len - 2 pieces
        are truncated (EOS kept) with a warning."""
        sp = self._require("tokenize()", ModalityDataError)
        captions = self._check_captions(captions)
        L = self.config.max_len
        out = torch.full((len(captions), L), PAD, dtype=torch.long)
        long = []
        for i, pieces in enumerate(sp.encode(captions)):
            if len(pieces) > L - 2:
                long.append(i)
                pieces = pieces[: L - 2]
            out[i, : len(pieces) + 2] = torch.tensor([BOS, *pieces, EOS])
        if long:
            warnings.warn(f"modality {self.name!r} (text): {len(long)} caption(s) longer than max_len - 2 = {L - 2} "
                          f"tokens were truncated, e.g. {captions[long[0]]!r}", stacklevel=2)
        return out

    def detokenize(self, ids: torch.Tensor) -> list[str]:
        """Token ids (B, L) -> captions: the pieces between BOS and the first EOS (pad and special ids skipped)."""
        sp = self._require("detokenize()", ModalityDataError)
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
            raise ModalityDataError(f"modality {self.name!r} (text): detokenize expects ids of shape (B, L), got "
                                    f"{tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}")
        out = []
        for row in _clean(ids.long()).tolist():
            out.append(sp.decode([i for i in row if i not in (PAD, BOS, EOS)]))
        return out

    def derive(self, batch: Mapping[str, BatchValue], generator: torch.Generator | None = None) -> torch.Tensor:
        """Token ids for the batch: its raw captions (list of str) tokenised, or its ids unchanged. A batch without
        captions is a ModalityDataError saying where captions come from (the data, or the ``captions`` transform)."""
        value = batch.get(self.name)
        if isinstance(value, torch.Tensor):
            self.validate(value)
            return value
        if isinstance(value, (list, tuple)):
            return self.tokenize(value)
        raise ModalityDataError(
            f"modality {self.name!r} (text): the batch has no captions under {self.name!r} (fields: {sorted(batch)}), "
            "and the text modality does not make them up.\nGive captions in the data (a dataset field mapped to it, "
            f"e.g. keys = {{caption = \"{self.name}\"}}), or synthesise them from the label and image with the "
            f"captions transform: add {{kind = \"captions\", into = \"{self.name}\"}} to [dataset] transforms."
        )

    # -- data -------------------------------------------------------------------------------------------
    def data_spec(self) -> DataSpec:
        vocab = self._sp.get_piece_size() if self._sp is not None else self.config.vocab_size
        return DataSpec((self.config.max_len,), "int64", 0, vocab - 1)

    def validate(self, x: BatchValue, *, where: str = "") -> None:
        """As Modality.validate, after checking the tokenizer exists; raw captions get a hint to call derive()."""
        self._require("validate()", ModalityDataError)
        if isinstance(x, (list, tuple)):
            raise ModalityDataError(f"modality {self.name!r} (text){f' ({where})' if where else ''}: expected token "
                                    "ids (a torch.Tensor), got raw captions; tokenise them with derive() or tokenize()")
        super().validate(x, where=where)

    def example_batch(self, n: int, generator: torch.Generator | None = None) -> Batch:
        """``n`` tokenised synthetic captions (fits the tokenizer on the caption grid first if needed)."""
        if not self.fitted:
            self.fit(None)
        grid = self.caption_grid()
        pick = torch.randint(len(grid), (n,), generator=generator).tolist()
        return {self.name: self.tokenize([grid[i] for i in pick])}

    # -- networks -----------------------------------------------------------------------------------------
    def build_encoder(self, latent: LatentSpec) -> nn.Module:
        """A TextEncoder: mean-pooled token embeddings projected into Z."""
        vocab = self._require("build_encoder()", ConfigError).get_piece_size()
        return TextEncoder(vocab, self.config.embed_dim, latent)

    def build_head(self, latent: LatentSpec, features: FeatureSpec) -> nn.Module:
        """A TextHead: (max_len, V) logits by an MLP from the pooled features, or by a
        :class:`~mtd_core.heads.MapReader` from the feature map (``head = "map"``)."""
        vocab = self._require("build_head()", ConfigError).get_piece_size()
        out, hidden = self.config.max_len * vocab, self.config.hidden
        net = (MapReader(features.map_channels, out, hidden) if self.config.head == "map" else
               nn.Sequential(nn.Linear(features.pooled_dim, hidden), nn.SiLU(), nn.Linear(hidden, out)))
        return TextHead(net, self.config.max_len, vocab)

    def _logits(self, pred: Prediction) -> torch.Tensor:
        shape = (self.config.max_len, self.vocab)
        if not isinstance(pred, torch.Tensor) or pred.ndim != 3 or tuple(pred.shape[1:]) != shape:
            got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
            raise ModalityDataError(f"modality {self.name!r} (text): expected logits of shape (B, {shape[0]}, "
                                    f"{shape[1]}), got {got}")
        return pred

    def loss(self, pred: Prediction, x: torch.Tensor) -> torch.Tensor:
        """Cross-entropy summed over all max_len positions, pad positions included (so the length is learned)."""
        logits = self._logits(pred).float()
        return F.cross_entropy(logits.transpose(1, 2), x, reduction="none").sum(1)

    def predicted_encoding(self, encoder: nn.Module, pred: Prediction) -> torch.Tensor:
        """E(xhat) from the expected token embeddings under the softmax, pooled like the encoder.

        pooled = sum_l sum_{v != pad} p_l(v) e_v / max(1, sum_l (1 - p_l(pad))): the expected sum of non-pad
        embeddings over the expected number of non-pad tokens (the encoder's count is >= 1 likewise). It equals
        the encoder's mean pooling exactly for a certain (one-hot) prediction, stays differentiable otherwise,
        and is then projected as in encode(), never re-normalised (an unsure prediction keeps its smaller RMS).
        """
        if not isinstance(encoder, TextEncoder):
            raise ModalityDataError(f"modality {self.name!r} (text): predicted_encoding needs the TextEncoder built "
                                    f"by build_encoder, got {type(encoder).__name__}")
        weight = encoder.embed.weight
        probs = torch.softmax(self._logits(pred).to(weight.dtype), dim=-1)
        total = torch.einsum("blv,vd->bd", probs[..., 1:], weight[1:])
        count = (1.0 - probs[..., PAD]).sum(1, keepdim=True).clamp_min(1.0)
        return encoder.project(total / count)

    def temper(self, pred: Prediction, temperature: float) -> torch.Tensor:
        """The logits divided by ``temperature`` (softmax(logits / temperature): sharper below 1)."""
        return self._logits(pred) / temperature

    def sample(self, pred: Prediction, *, greedy: bool = False, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """Token ids (B, max_len): the argmax (greedy) or a draw at every position; padding after the first EOS."""
        logits = self._logits(pred).detach().float()
        if greedy:
            ids = logits.argmax(-1)
        else:
            probs = torch.softmax(logits, -1).reshape(-1, logits.shape[-1])
            ids = torch.multinomial(probs, 1, generator=generator).reshape(logits.shape[:2])
        return _clean(ids)


@hookimpl
def mtd_register_modalities() -> list[type[Modality]]:
    """The text modality."""
    return [TextModality]
