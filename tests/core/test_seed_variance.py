"""Seed-variance maths: row seeds, caption noise, low-frequency noise, shift composition, step windows."""

import math

import pytest
import torch
import torch.nn.functional as F

from core import sampler
from core import seed_variance as sv


def test_row_seeds_are_fixed_and_distinct():
    a = sv.row_seed("caption-noise", 42, 0, 0)
    assert a == sv.row_seed("caption-noise", 42, 0, 0)
    others = {sv.row_seed("caption-noise", 42, 0, 1), sv.row_seed("caption-noise", 43, 0, 0),
              sv.row_seed("caption-noise", 42, 1, 0), sv.row_seed("initial-noise", 42, 0, 0)}
    assert a not in others and len(others) == 4
    assert 0 <= a < 2**63


def test_caption_noise_touches_only_content_of_chosen_rows():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 12, 16, generator=g) * torch.linspace(0.1, 10, 16)  # channels of very different size
    out = sv.add_caption_noise(tokens, (3, 7), [5, None, 6], strength=0.5, fraction=1.0)
    assert torch.equal(out[:, :3], tokens[:, :3]) and torch.equal(out[:, 7:], tokens[:, 7:])
    assert torch.equal(out[1], tokens[1])  # row without a seed (unconditional)
    assert not torch.equal(out[0, 3:7], tokens[0, 3:7]) and not torch.equal(out[0], out[2])
    assert sv.add_caption_noise(tokens, (3, 7), [5, None, 6], 0.0, 1.0) is tokens
    assert sv.add_caption_noise(tokens, (3, 7), [5, None, 6], 0.5, 0.0) is tokens
    assert sv.add_caption_noise(tokens, (7, 7), [5, None, 6], 0.5, 1.0) is tokens


def test_caption_noise_is_relative_to_each_channels_rms():
    content = torch.randn(4000, 3, generator=torch.Generator().manual_seed(1)) * torch.tensor([0.5, 2.0, 40.0])
    tokens = content[None]
    out = sv.add_caption_noise(tokens, (0, 4000), [9], strength=0.3, fraction=1.0)
    noise = (out - tokens)[0]
    rms = content.pow(2).mean(0).sqrt()
    assert torch.allclose(noise.std(0) / rms, torch.full((3,), 0.3), rtol=0.06)
    half = sv.add_caption_noise(tokens, (0, 4000), [9], strength=0.3, fraction=0.25)
    touched = ((half - tokens)[0] != 0).float().mean()
    assert abs(float(touched) - 0.25) < 0.02


def test_structure_noise_keeps_unit_variance_and_adds_low_frequencies():
    noise = torch.randn(4, 16, 64, 64, generator=torch.Generator().manual_seed(2))
    assert sv.structure_noise(noise, [1, 2, 3, 4], 0.0, 8) is noise
    mixed = sv.structure_noise(noise, [1, 2, 3, 4], 1.0, 8)
    assert mixed.shape == noise.shape and mixed.dtype == noise.dtype
    assert abs(float(mixed.std()) - 1.0) < 0.05
    # energy at the scale of an 8x8 cell: white noise averages away (var 1/64), the field does not
    coarse_stock = F.avg_pool2d(noise, 8).var()
    coarse_mixed = F.avg_pool2d(mixed, 8).var()
    assert float(coarse_stock) == pytest.approx(1 / 64, rel=0.2)
    assert float(coarse_mixed) > 10 * float(coarse_stock)
    assert not torch.equal(mixed[0], mixed[1])
    assert torch.equal(mixed, sv.structure_noise(noise, [1, 2, 3, 4], 1.0, 8))


def test_shifts_compose_by_multiplying():
    t = torch.linspace(0.01, 1.0, 50, dtype=torch.float64)
    for factor in (0.5, 1.0, 2.0):
        assert torch.allclose(sv.shift_sigma(sampler.shifted_sigma(t, 3.0), factor), sampler.shifted_sigma(t, 3.0 * factor))


def test_per_seed_factors_and_scales_stay_in_range():
    seeds = [sv.row_seed("early-steps", 0, 0, r) for r in range(64)]
    factors = sv.shift_factors(seeds, 0.5)
    assert float(factors.min()) >= math.exp(-0.5) and float(factors.max()) <= math.exp(0.5)
    assert float(factors.std()) > 0.1
    scales = sv.guidance_scales(seeds, 1.0, 2.0)
    assert float(scales.min()) >= -1.0 and float(scales.max()) <= 3.0
    assert torch.equal(sv.shift_factors(seeds, 0.0), torch.ones(64, dtype=torch.float64))


def test_step_window():
    sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    evaluations = torch.tensor([1.0, 0.75, 0.5, 0.25])
    assert sv.in_window(evaluations, sigmas, 1).tolist() == [True, False, False, False]
    assert sv.in_window(evaluations, sigmas, 2).tolist() == [True, True, False, False]
    assert sv.in_window(evaluations, sigmas, 0).tolist() == [False] * 4
    assert sv.in_window(evaluations, sigmas, 99).tolist() == [True] * 4
    assert sv.in_window(evaluations, None, 2).tolist() == [False] * 4


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="strength"):
        sv.validate(-1.0)
    with pytest.raises(ValueError, match="fraction"):
        sv.validate(1.0, 1.5)
    with pytest.raises(ValueError, match="steps"):
        sv.validate(1.0, 0.5, -1)
    with pytest.raises(ValueError, match="scale"):
        sv.structure_noise(torch.zeros(1, 16, 8, 8), [0], 1.0, 0)
