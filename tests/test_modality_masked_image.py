"""The masked image modality: masks hide exactly the requested ratio and derive changes only masked pixels."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mtd_core.errors import ModalityDataError
from mtd_plugins.masked_image import MaskedImageModality, apply_mask, keep_observed, make_mask


@given(ratio=st.floats(0.0, 1.0), h=st.integers(1, 12), w=st.integers(1, 12), seed=st.integers(0, 1000))
def test_pixel_masks_hide_exactly_the_ratio(ratio: float, h: int, w: int, seed: int) -> None:
    mask = make_mask((3, 2, h, w), ratio, torch.Generator().manual_seed(seed))
    assert mask.shape == (3, 1, h, w) and mask.dtype == torch.bool
    assert (mask.flatten(1).sum(1) == round(ratio * h * w)).all()


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.75])
def test_patch_masks_hide_whole_aligned_patches(ratio: float) -> None:
    mask = make_mask((4, 1, 8, 8), ratio, torch.Generator().manual_seed(0), kind="patch", patch=2)
    blocks = mask.reshape(4, 1, 4, 2, 4, 2).float().mean((3, 5))  # fraction hidden of each 2x2 patch
    assert ((blocks == 0) | (blocks == 1)).all()
    assert (mask.flatten(1).sum(1) == 4 * round(ratio * 16)).all()


def test_patch_masks_crop_edge_patches() -> None:
    mask = make_mask((2, 1, 5, 5), 1.0, kind="patch", patch=2)
    assert mask.shape == (2, 1, 5, 5) and mask.all()


def test_masks_are_reproducible_per_seed() -> None:
    a = make_mask((8, 1, 8, 8), 0.5, torch.Generator().manual_seed(3))
    b = make_mask((8, 1, 8, 8), 0.5, torch.Generator().manual_seed(3))
    c = make_mask((8, 1, 8, 8), 0.5, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(("mask_kind", "ratio"), [("pixel", 0.25), ("patch", 0.5), ("pixel", 0.75)])
def test_derive_changes_only_masked_pixels(mask_kind: str, ratio: float) -> None:
    m = MaskedImageModality(channels=3, mask=mask_kind, ratio=ratio, fill=-1.0)
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.1  # no pixel equals fill
    out = m.derive({"image": x}, torch.Generator().manual_seed(1))
    m.validate(out)
    hidden = out == -1.0
    assert torch.equal(out[~hidden], x[~hidden])  # unmasked pixels untouched
    assert (hidden == hidden[:, :1]).all()  # the same pixels are hidden in every channel
    expected = round(ratio * 64) if mask_kind == "pixel" else 4 * round(ratio * 16)
    assert (hidden[:, 0].flatten(1).sum(1) == expected).all()


def test_apply_mask_sets_only_masked_pixels_to_fill() -> None:
    x = torch.rand(2, 1, 4, 4)
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 1, 2] = True
    out = apply_mask(x, mask, fill=0.5)
    assert out[0, 0, 1, 2] == 0.5
    mask_other = ~mask
    assert torch.equal(out[mask_other], x[mask_other])
    with pytest.raises(ModalityDataError, match="bool"):
        apply_mask(x, mask.float())


def test_keep_observed_takes_generated_pixels_only_where_hidden() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 6, 6, generator=g)
    mask = make_mask(x.shape, 0.5, g, kind="patch", patch=2)
    generated = torch.rand(3, 2, 6, 6, generator=g)
    out = keep_observed(generated, apply_mask(x, mask), mask)
    hidden = mask.expand_as(x)
    assert torch.equal(out[hidden], generated[hidden])
    assert torch.equal(out[~hidden], x[~hidden])
    with pytest.raises(ModalityDataError, match="keep_observed.*bool"):
        keep_observed(generated, x, mask.float())
    with pytest.raises(ModalityDataError, match=r"keep_observed.*same shape"):
        keep_observed(generated[:2], x, mask)


def test_derive_errors_name_the_modality_and_source() -> None:
    m = MaskedImageModality(name="hidden", source="photo")
    with pytest.raises(ModalityDataError, match=r"'hidden'.*'photo'.*lacks"):
        m.derive({"image": torch.zeros(1, 1, 8, 8)})
    with pytest.raises(ModalityDataError, match=r"'hidden' \(source 'photo'\).*shape"):
        m.derive({"photo": torch.zeros(1, 1, 6, 6)})


def test_make_mask_rejects_bad_arguments() -> None:
    with pytest.raises(ModalityDataError, match="ratio"):
        make_mask((1, 1, 4, 4), 1.5)
    with pytest.raises(ModalityDataError, match="kind"):
        make_mask((1, 1, 4, 4), 0.5, kind="stripes")
    assert MaskedImageModality(ratio=0.25, mask="pixel").make_mask((2, 1, 8, 8)).flatten(1).sum(1).tolist() == [16, 16]
