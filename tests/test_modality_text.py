"""The text modality: in-memory tokenizer, assets, derive (raw captions only; the captions transform of
mtd_plugins/captions.py makes them up, tests/test_captions.py), token-level loss and sampling."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mtd_core.errors import CheckpointError, ConfigError, ModalityDataError
from mtd_core.modality import FeatureSpec, HeadInput, LatentSpec
from mtd_plugins.text import BOS, EOS, PAD, TextModality

LATENT = LatentSpec((1, 8, 8))
FEATURES = FeatureSpec(pooled_dim=8, map_channels=4)


@pytest.fixture(scope="module")
def text() -> TextModality:
    m = TextModality()
    m.fit(None)
    return m


def test_tokenizer_round_trips_every_synthesised_caption(text: TextModality) -> None:
    captions = text.caption_grid()
    assert "a bright thick three" in captions and "an eight" in captions
    ids = text.tokenize(captions)
    assert ids.shape == (len(captions), 12) and ids.dtype == torch.long
    assert text.detokenize(ids) == captions


def test_token_layout_bos_pieces_eos_then_padding(text: TextModality) -> None:
    ids = text.tokenize(["a faint thin seven", ""])
    row = ids[0].tolist()
    end = row.index(EOS)
    assert row[0] == BOS and all(i not in (PAD, BOS, EOS) for i in row[1:end]) and set(row[end + 1:]) <= {PAD}
    assert ids[1, :2].tolist() == [BOS, EOS] and (ids[1, 2:] == PAD).all()
    text.validate(ids)


def test_long_captions_are_truncated_with_a_warning(text: TextModality) -> None:
    caption = " ".join(["a bright thick three"] * 5)
    with pytest.warns(UserWarning, match="truncated"):
        ids = text.tokenize([caption])
    assert ids[0, 0] == BOS and ids[0, -1] == EOS and (ids[0] != PAD).all()
    assert caption.startswith(text.detokenize(ids)[0])


def test_assets_round_trip_reproduces_the_same_ids(text: TextModality) -> None:
    captions = ["a bright thin two", "a faint thick nine", "an eight"]
    rebuilt = TextModality.from_config(json.loads(json.dumps(text.to_config())))
    rebuilt.load_assets(text.assets())
    assert torch.equal(rebuilt.tokenize(captions), text.tokenize(captions))
    assert rebuilt.assets() == text.assets() and rebuilt.vocab == text.vocab


def test_fit_on_raw_captions(text: TextModality) -> None:
    m = TextModality(vocab_size=80, max_len=16)
    captions = ["the quick brown fox", "jumps over the lazy dog", "a red square"]
    m.fit([{"text": captions[:2]}, {"text": captions[2:], "label": torch.tensor([1])}])
    assert m.detokenize(m.tokenize(captions)) == captions
    assert m.assets() != text.assets()


def test_unfitted_modality_says_fit_or_load_assets_is_needed() -> None:
    m = TextModality(name="caption")
    for call, error in [(lambda: m.build_head(LATENT, FEATURES), ConfigError),
                        (lambda: m.build_encoder(LATENT), ConfigError),
                        (lambda: m.validate(torch.zeros(1, 12, dtype=torch.long)), ModalityDataError),
                        (lambda: m.tokenize(["a one"]), ModalityDataError)]:
        with pytest.raises(error, match=r"(?s)'caption'.*fit\(batches\).*load_assets\(assets\)"):
            call()
    assert m.assets() == {}


def test_derive_tokenises_raw_captions_and_keeps_ids(text: TextModality) -> None:
    raw = ["a faint thick one", "a bright thin zero"]
    ids = text.derive({"text": raw})
    assert torch.equal(ids, text.tokenize(raw)) and text.detokenize(ids) == raw
    assert torch.equal(text.derive({"text": ids}), ids)
    with pytest.raises(ModalityDataError, match="raw captions"):
        text.validate(["a one"])


def test_derive_without_captions_says_to_add_the_captions_transform(text: TextModality) -> None:
    """No synthesis in the modality: a label and an image are not captions, and the error says where they come from."""
    batch = {"label": torch.tensor([3, 7]), "image": torch.zeros(2, 1, 8, 8)}
    with pytest.raises(ModalityDataError) as info:
        text.derive(batch)
    msg = str(info.value)
    assert msg.startswith("modality 'text' (text): the batch has no captions under 'text' (fields: ['image', 'label'])")
    assert 'add {kind = "captions", into = "text"} to [dataset] transforms' in msg
    assert 'keys = {caption = "text"}' in msg


def test_class_names_give_the_nouns_of_the_fallback_captions() -> None:
    m = TextModality(class_names=["boot", "shirt"])
    m.fit(None)
    assert {"a shirt", "a boot", "a bright thick shirt"} <= set(m.caption_grid())
    assert m.detokenize(m.derive({"text": ["a shirt", "a faint thin boot"]})) == ["a shirt", "a faint thin boot"]


def test_the_moved_synthesis_options_are_ignored_with_a_warning() -> None:
    with pytest.warns(UserWarning, match=r"'text'.*\['source_label', 'source_image'\] are ignored.*kind = \"captions\""):
        m = TextModality(source_label="label", source_image="image", max_len=10)
    assert m.config.max_len == 10 and "source_label" not in m.to_config()


def test_loss_sums_cross_entropy_over_every_position(text: TextModality) -> None:
    ids = text.tokenize(["a bright thick three", "a one"])
    logits = torch.randn(2, 12, text.vocab, generator=torch.Generator().manual_seed(0))
    ref = -F.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1).sum(1)  # pad positions included
    torch.testing.assert_close(text.loss(logits, ids), ref)


def test_certain_prediction_encodes_like_the_data(text: TextModality) -> None:
    torch.manual_seed(0)
    enc = text.build_encoder(LATENT)
    ids = text.tokenize(["a bright thick three", "a one"])
    logits = 1e4 * F.one_hot(ids, text.vocab).float()
    torch.testing.assert_close(text.predicted_encoding(enc, logits), text.encode(enc, ids))


def test_a_low_temperature_encodes_the_most_probable_tokens(text: TextModality) -> None:
    torch.manual_seed(0)
    enc = text.build_encoder(LATENT)
    ids = text.tokenize(["a bright thick three", "a one"])
    logits = 3 * F.one_hot(ids, text.vocab).float() + torch.randn(2, 12, text.vocab, generator=torch.Generator().manual_seed(1))
    ids_hat = logits.argmax(-1)
    assert not torch.allclose(text.predicted_encoding(enc, logits), text.encode(enc, ids_hat))
    torch.testing.assert_close(text.predicted_encoding(enc, text.temper(logits, 1e-4)), text.encode(enc, ids_hat))
    with pytest.raises(ModalityDataError, match=r"modality 'text' \(text\): expected logits of shape"):
        text.temper(torch.zeros(2, 5), 0.5)


def test_map_head_reads_the_feature_map_and_its_positions(text: TextModality) -> None:
    m = TextModality(head="map")
    m.load_assets(text.assets())
    assert m.head_input is HeadInput.MAP and text.head_input is HeadInput.POOLED
    assert TextModality.from_config(json.loads(json.dumps(m.to_config()))).head_input is HeadInput.MAP
    torch.manual_seed(0)
    head = m.build_head(LATENT, FEATURES)
    fmap = torch.randn(3, FEATURES.map_channels, 8, 8)
    logits = head(fmap)
    assert logits.shape == (3, 12, m.vocab)
    m.loss(logits, m.tokenize(["a one", "an eight", "a faint thin seven"])).sum().backward()  # trainable end to end
    assert all(p.grad is not None for p in head.parameters())
    assert not torch.allclose(head(fmap.flip(-1)), logits, atol=1e-4)  # not a mean over the whole map
    with pytest.raises(ConfigError, match="'head' must be one of \\['pooled', 'map'\\]"):
        TextModality(head="conv")


def test_sampling_pads_after_eos(text: TextModality) -> None:
    logits = torch.zeros(1, 12, text.vocab)
    logits[0, :, 5] = 5.0
    logits[0, 0, BOS] = logits[0, 3, EOS] = 10.0
    ids = text.sample(logits, greedy=True)
    assert ids[0, :4].tolist() == [BOS, 5, 5, EOS] and (ids[0, 4:] == PAD).all()
    draw = text.sample(logits, generator=torch.Generator().manual_seed(0))
    text.validate(draw)
    assert torch.equal(draw, text.sample(logits, generator=torch.Generator().manual_seed(0)))


def test_example_batch_fits_on_demand() -> None:
    m = TextModality(max_len=8)
    batch = m.example_batch(5, torch.Generator().manual_seed(0))
    assert m.fitted
    m.validate(batch["text"])
    assert set(m.detokenize(batch["text"])) <= set(m.caption_grid())


def test_bad_vocab_and_assets_give_clear_errors(text: TextModality) -> None:
    with pytest.raises(ConfigError, match=r"(?s)'text'.*distinct characters.*vocab_size = 8"):
        TextModality(vocab_size=8).fit(None)
    m = TextModality()
    with pytest.raises(CheckpointError, match=r"'text'.*lack 'tokenizer.model'"):
        m.load_assets({})
    with pytest.raises(CheckpointError, match=r"'text'.*not a SentencePiece model"):
        m.load_assets({"tokenizer.model": b"garbage"})
