"""core.rope: the text-axis extension maths, checked against properties of each method."""

import math

import pytest
import torch

from core import rope


class PlainEmbedND(torch.nn.Module):
    """Multi-axis RoPE as ComfyUI's EmbedND lays it out: [B, 1, N, sum(d)/2, 2, 2]."""

    def __init__(self, axes_dim=(32, 48, 48), theta=256.0):
        super().__init__()
        self.axes_dim, self.theta = list(axes_dim), theta

    def forward(self, ids):
        blocks = [rope.rotation(ids[..., i], rope.base_frequencies(d, self.theta)) for i, d in enumerate(self.axes_dim)]
        return torch.cat(blocks, dim=-3).unsqueeze(1)


def caption_ids(n):
    ids = torch.zeros(1, n, 3)
    ids[0, :, 0] = torch.arange(1, n + 1)
    return ids


def image_ids(l_pad, h=4, w=4, pad=16):
    ids = torch.zeros(1, h * w + pad, 3)
    ids[0, : h * w, 0] = l_pad + 1
    ids[0, : h * w, 1] = torch.arange(h).repeat_interleave(w).float()
    ids[0, : h * w, 2] = torch.arange(w).repeat(h).float()
    return ids


def test_ntk_interpolates_the_lowest_frequency_and_keeps_the_highest():
    s, d = 4.0, 32
    base = rope.base_frequencies(d, 256.0)
    ntk = rope.axis_frequencies("ntk", d, 256.0, s, 512)
    assert ntk[0] == base[0]
    assert torch.isclose(ntk[-1], base[-1] / s, rtol=1e-12)
    assert torch.all(ntk <= base)


def test_yarn_keeps_fast_and_interpolates_slow_frequencies():
    s, d, trained = 3.0, 32, 512
    base = rope.base_frequencies(d, 256.0)
    yarn = rope.axis_frequencies("yarn", d, 256.0, s, trained)
    turns = trained * base / (2 * math.pi)
    assert torch.equal(yarn[turns > 40], base[turns > 40])
    assert torch.allclose(yarn[turns < 0.9], base[turns < 0.9] / s)
    middle = (turns < 20) & (turns > 2)
    assert torch.all(yarn[middle] < base[middle]) and torch.all(yarn[middle] > base[middle] / s)
    assert rope.yarn_temperature(1.0) == 1.0 and rope.yarn_temperature(0.5) == 1.0
    assert rope.yarn_temperature(math.e) == pytest.approx(1.1)


def test_dynamic_factor_reads_the_caption_length_from_either_call():
    assert rope.largest_caption_position(caption_ids(640)) == 640
    assert rope.largest_caption_position(image_ids(640)) == 640
    assert rope.largest_caption_position(image_ids(640, h=1, w=1, pad=31)) == 640
    assert rope.dynamic_factor(640, 512) == 1.25 and rope.dynamic_factor(96, 512) == 1.0


@pytest.mark.parametrize("method", rope.METHODS)
def test_factor_one_returns_the_inner_output_itself(method):
    inner = PlainEmbedND()
    for ids in (caption_ids(64), image_ids(64)):
        assert torch.equal(rope.ExtendedRoPE(inner, inner.axes_dim, 256.0, method, 1.0)(ids), inner(ids))
        assert torch.equal(rope.ExtendedRoPE(inner, inner.axes_dim, 256.0, method, None)(ids), inner(ids))


def test_linear_equals_the_inner_embedder_at_divided_positions_and_leaves_axes_1_2():
    inner = PlainEmbedND()
    ids = image_ids(1024)
    out = rope.ExtendedRoPE(inner, inner.axes_dim, 256.0, "linear", 2.0)(ids)
    moved = ids.clone()
    moved[..., 0] /= 2
    assert torch.allclose(out, inner(moved), atol=1e-6)
    assert torch.equal(out[:, :, :, 16:], inner(ids)[:, :, :, 16:])


def test_dynamic_linear_fits_the_caption_into_the_trained_length():
    inner = PlainEmbedND()
    ext = rope.ExtendedRoPE(inner, inner.axes_dim, 256.0, "linear", None, trained_length=512)
    out = ext(caption_ids(1024))
    assert ext.last_factor == 2.0
    moved = caption_ids(1024)
    moved[..., 0] /= 2
    assert torch.allclose(out, inner(moved), atol=1e-6)
    ext(image_ids(1024))
    assert ext.last_factor == 2.0  # the image call gets the caption's factor


def test_yarn_temperature_scales_the_chosen_dims():
    inner = PlainEmbedND()
    ids = caption_ids(64)
    plain = rope.ExtendedRoPE(inner, inner.axes_dim, 256.0, "yarn", 2.0, yarn_attention="off")(ids)
    every = rope.ExtendedRoPE(inner, inner.axes_dim, 256.0, "yarn", 2.0, yarn_attention="all dims")(ids)
    text = rope.ExtendedRoPE(inner, inner.axes_dim, 256.0, "yarn", 2.0, yarn_attention="text axis dims")(ids)
    m = 0.1 * math.log(2.0) + 1
    assert torch.allclose(every, plain * m)
    assert torch.allclose(text[:, :, :, :16], plain[:, :, :, :16] * m)
    assert torch.equal(text[:, :, :, 16:], plain[:, :, :, 16:])


@pytest.mark.parametrize("kwargs, words", [
    ({"method": "cubic"}, "method"),
    ({"factor": 0.0}, "factor"),
    ({"factor": -2.0}, "factor"),
    ({"factor": float("nan")}, "factor"),
    ({"trained_length": 0}, "trained_length"),
    ({"method": "yarn", "beta_fast": 1.0, "beta_slow": 1.0}, "beta_fast"),
    ({"method": "yarn", "yarn_attention": "sometimes"}, "yarn_attention"),
])
def test_bad_settings_name_the_input(kwargs, words):
    args = {"method": "linear", "factor": 2.0, "trained_length": 512, **kwargs}
    with pytest.raises(ValueError, match=words):
        rope.validate(**args)


class Block(torch.nn.Module):
    """Stands in for a NextDiT block: returns the rotation it attends with."""

    def forward(self, x, x_mask, freqs_cis, adaln_input=None, **kwargs):
        return freqs_cis


@pytest.mark.parametrize("attention", ["all dims", "text axis dims"])
def test_noise_refiner_copies_attend_without_the_temperature(attention):
    inner = PlainEmbedND()
    ext = rope.ExtendedRoPE(inner, [32, 48, 48], 256.0, "yarn", 4.0, yarn_attention=attention)
    off = rope.ExtendedRoPE(inner, [32, 48, 48], 256.0, "yarn", 4.0, yarn_attention="off")
    caption = ext(caption_ids(64)).movedim(1, 2)
    image = ext(image_ids(64)).movedim(1, 2)
    plain = off(image_ids(64)).movedim(1, 2)
    assert not torch.equal(image, plain)  # the main layers get the temperature
    block = rope.temperature_free(Block(), ext)
    assert torch.equal(block(None, None, image), plain)  # the noise refiner does not
    assert torch.equal(block(None, None, caption), caption)  # anything else passes unchanged
    again = rope.temperature_free(block, off)  # a second extender re-wraps the original class
    assert type(again).__mro__[2] is Block and again.zimage_lab_rope is off
