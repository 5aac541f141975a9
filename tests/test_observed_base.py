"""Keeping what a given modality shows of the base: Modality.observed_base, the base estimate's data-consistency
step (estimate.py) and generate(..., keep_observed=...) on a restoration model (image + masked image)."""

from __future__ import annotations

import pytest
import torch

from mtd_core.diffusion.noise import respaced_timesteps
from mtd_core.errors import ConfigError, ModalityDataError
from mtd_core.model import MultiTaskModel
from mtd_core.sampling import BaseEstimate, BaseRange, generate
from mtd_plugins.image import ImageModality
from mtd_plugins.masked_image import MaskedImageModality, apply_mask, make_mask
from tests.test_sampling import tiny_model

CONFIG = {"modalities": [{"kind": "image", "role": "base", "size": 8}, {"kind": "masked_image", "size": 8}],
          "diffusion": {"kind": "linear", "T": 50}}


def restoration_model(config: dict = CONFIG) -> MultiTaskModel:
    """An untrained image + masked image model whose zero-initialised layers are randomised (eps is not 0)."""
    return tiny_model(0, config)


def masked_batch(n: int = 3, ratio: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 8, 8, generator=g) * 1.8 - 0.9
    mask = make_mask(x.shape, ratio, g, kind="patch", patch=2)
    return x, mask, apply_mask(x, mask, 0.0)


def test_a_masked_image_shows_its_unhidden_pixels_of_its_source_only():
    x, mask, masked = masked_batch()
    m = MaskedImageModality(size=8)
    values, known = m.observed_base(masked, ImageModality(size=8, role="base"))
    assert values is masked and known.dtype == torch.bool and torch.equal(known, ~mask)
    assert m.observed_base(masked, ImageModality(name="other", size=8, role="base")) is None  # not its source
    assert m.observed_base(torch.zeros(3, 1, 4, 4), ImageModality(size=4, role="base")) is None  # other shape
    colour = MaskedImageModality(channels=3, size=8)  # a pixel is hidden only where every channel is the fill
    rgb = torch.zeros(1, 3, 8, 8)
    rgb[0, 2, 0, 0] = 0.5
    _, known = colour.observed_base(rgb, ImageModality(channels=3, size=8, role="base"))
    assert known.shape == (1, 1, 8, 8) and known.sum() == 1 and known[0, 0, 0, 0]


@pytest.mark.parametrize("rule", ["rederive", "keep"])
def test_the_estimate_takes_the_observed_values_and_keeps_the_decomposition_exact(rule):
    model = restoration_model()
    model.eval()
    fp = model.forward_process.respace(respaced_timesteps(50, 10))
    g = torch.Generator().manual_seed(3)
    z = 2 * torch.randn(2, 1, 8, 8, generator=g)
    eps, enc = torch.randn(2, 1, 8, 8, generator=g), {"masked_image": torch.randn(2, 1, 8, 8, generator=g)}
    z0_hat = fp.z0_from_eps(z, eps, enc, 5)  # the decomposition of z a step starts from
    values = torch.rand(2, 1, 8, 8, generator=g) - 0.5
    known = torch.rand(2, 1, 8, 8, generator=g) < 0.3
    base = BaseRange(channels=1, low=-1.0, high=1.0, name="image")
    z0, eps2, state = BaseEstimate("static", rule).apply(fp, z, 5, z0_hat, eps, enc, base, (values, known))
    assert torch.equal(z0[known], values[known])  # every observed value, exactly
    assert torch.equal(z0[~known], z0_hat.clamp(-1, 1)[~known])  # the clipped estimate everywhere else
    ab = float(fp.abar[5])
    torch.testing.assert_close(ab**0.5 * z0 + fp.injected(enc, 5, z) + (1 - ab) ** 0.5 * eps2, state)
    assert torch.equal(state, z) == (rule == "rederive")


@pytest.mark.parametrize("sampler", ["dpmpp_2m_sde", "ddim", "heun"])
def test_a_restoration_keeps_every_observed_pixel_and_generates_the_hidden_ones(sampler):
    model = restoration_model()
    x, mask, masked = masked_batch()
    out = generate(model, given={"masked_image": masked}, sampler=sampler, steps=6, progress=False,
                   generator=torch.Generator().manual_seed(0))
    restored = out.samples["image"]
    observed = ~mask.expand_as(x)
    torch.testing.assert_close(restored[observed], masked[observed], rtol=0, atol=1e-6)
    assert not torch.equal(restored[~observed], masked[~observed])  # the hidden ones are generated, not the fill
    free = generate(model, given={"masked_image": masked}, sampler=sampler, steps=6, progress=False,
                    keep_observed=False, generator=torch.Generator().manual_seed(0)).samples["image"]
    assert (free[observed] - masked[observed]).abs().mean() > 0.05  # without it the untrained model redraws them


def test_keep_observed_changes_nothing_where_no_given_modality_shows_the_base():
    config = {"modalities": [{"kind": "image", "role": "base", "size": 8}, {"kind": "label", "num_classes": 4,
                                                                             "hidden": 8}],
              "diffusion": {"kind": "linear", "T": 50}}
    model = restoration_model(config)
    y = torch.tensor([0, 1, 2])
    a, b = (generate(model, given={"label": y}, steps=4, progress=False, keep_observed=keep,
                     generator=torch.Generator().manual_seed(0)).samples["image"] for keep in (True, False))
    assert torch.equal(a, b)


def test_keep_observed_errors():
    model = restoration_model()
    _, _, masked = masked_batch()
    with pytest.raises(ConfigError, match=r"keep_observed must be true or false, got 'yes'"):
        generate(model, given={"masked_image": masked}, steps=3, progress=False, keep_observed="yes")

    class Wrong(MaskedImageModality):
        kind = "wrong_masked"

        def observed_base(self, x, base):
            return x[:, :, :4], x[:, :, :4] != 0

    class WrongMask(MaskedImageModality):
        kind = "wrong_mask"

        def observed_base(self, x, base):
            return x, torch.ones(3, 1, 4, 8, dtype=torch.bool)  # does not broadcast to the image

    for cls, got in ((Wrong, r"got values \(3, 1, 4, 8\) and a torch.bool mask \(3, 1, 4, 8\)"),
                     (WrongMask, r"got values \(3, 1, 8, 8\) and a torch.bool mask \(3, 1, 4, 8\)")):
        model.taskset.modalities["masked_image"].__class__ = cls
        with pytest.raises(ModalityDataError, match=rf"modality 'masked_image' \({cls.kind}\): observed_base\(\) "
                                                    rf"must return values shaped like the base 'image''s batch "
                                                    rf"\(3, 1, 8, 8\).*{got}"):
            generate(model, given={"masked_image": masked}, steps=3, progress=False)


SINGLE = {"modalities": [{"kind": "image", "role": "base", "size": 8}], "diffusion": {"kind": "linear", "T": 50}}


@pytest.mark.parametrize("sampler", ["dpmpp_2m_sde", "ddim"])
def test_inpainting_with_a_single_task_model_keeps_the_known_pixels(sampler):
    model = restoration_model(SINGLE)
    x, mask, _ = masked_batch()
    out = generate(model, inpaint=(x, mask), sampler=sampler, steps=6, progress=False,
                   generator=torch.Generator().manual_seed(0))
    inpainted, known = out.samples["image"], ~mask.expand_as(x)
    assert out.mode == "joint" and len(inpainted) == len(x)  # n from the images
    torch.testing.assert_close(inpainted[known], x[known], rtol=0, atol=1e-6)
    assert (inpainted[~known] - x[~known]).abs().mean() > 0.05  # the hidden ones are generated
    plain = generate(model, len(x), sampler=sampler, steps=6, progress=False,
                     generator=torch.Generator().manual_seed(0)).samples["image"]
    assert (plain[known] - x[known]).abs().mean() > 0.05


def test_inpainting_joins_what_a_given_masked_image_shows():
    model = restoration_model()
    x, mask, masked = masked_batch()
    left = torch.zeros_like(mask)
    left[..., :4] = True  # the inpainting images know the right half only
    other = torch.rand(x.shape, generator=torch.Generator().manual_seed(9)) - 0.5
    out = generate(model, given={"masked_image": masked}, inpaint=(other, left), steps=4, progress=False)
    image = out.samples["image"]
    right, seen = ~left.expand_as(x), ~mask.expand_as(x)
    torch.testing.assert_close(image[right], other[right], rtol=0, atol=1e-6)  # the inpainting images win
    torch.testing.assert_close(image[seen & ~right], masked[seen & ~right], rtol=0, atol=1e-6)


@pytest.mark.parametrize("inpaint, given, error, message", [
    ("x", None, ConfigError, r"inpaint must be a tuple \(images, mask\) of tensors, got str"),
    ((torch.zeros(3, 1, 4, 4), torch.zeros(3, 1, 4, 4, dtype=torch.bool)), None, ModalityDataError,
     r"inpaint needs images shaped like a batch of the base 'image' \(3, 1, 8, 8\).*got images \(3, 1, 4, 4\)"),
    ((torch.zeros(3, 1, 8, 8), torch.zeros(3, 1, 8, 8)), None, ModalityDataError, r"a torch.float32 mask"),
    ((torch.full((3, 1, 8, 8), 2.0), torch.zeros(3, 1, 8, 8, dtype=torch.bool)), None, ModalityDataError,
     r"inpaint images"),
    ((torch.zeros(3, 1, 8, 8), torch.zeros(3, 1, 8, 8, dtype=torch.bool)), {"image": torch.zeros(3, 1, 8, 8)},
     ConfigError, r"the base is given here \(read-out\)"),
])
def test_inpaint_errors(inpaint, given, error, message):
    with pytest.raises(error, match=message):
        generate(restoration_model(SINGLE), 3, given=given, inpaint=inpaint, steps=3, progress=False)
