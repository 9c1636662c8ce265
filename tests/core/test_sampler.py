"""core.sampler: the shift formula, ComfyUI's simple schedule, and settings checks."""

import math

import pytest
import torch

from core import sampler


def test_shift_one_is_identity():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.equal(sampler.shifted_sigma(t, 1.0), t)


@pytest.mark.parametrize("shift", [0.5, 3.0, 7.0])
def test_shifted_sigma_matches_the_sd3_time_shift(shift):
    # sigma(t) = shift*t / (1 + (shift-1)*t), written here from its odds form: sigma/(1-sigma) = shift * t/(1-t)
    for t in [0.1, 0.25, 0.5, 0.9]:
        s = float(sampler.shifted_sigma(t, shift))
        assert math.isclose(s / (1 - s), shift * t / (1 - t), rel_tol=1e-12)
    assert float(sampler.shifted_sigma(0.0, shift)) == 0.0
    assert float(sampler.shifted_sigma(1.0, shift)) == 1.0


def test_shift_above_one_spends_more_steps_at_high_noise():
    plain, shifted = sampler.simple_schedule(8, 1.0), sampler.simple_schedule(8, 3.0)
    assert torch.all(shifted[1:-1] > plain[1:-1])


def test_simple_schedule_shape_and_ends():
    s = sampler.simple_schedule(8, 3.0)
    assert s.shape == (9,)
    assert float(s[0]) == 1.0 and float(s[-1]) == 0.0
    assert torch.all(s[:-1] > s[1:])


def test_simple_schedule_at_shift_one_is_the_uniform_grid():
    s = sampler.simple_schedule(4, 1.0)
    assert torch.allclose(s, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("steps, shift, denoise, word", [
    (0, 3.0, 1.0, "steps"), (8, 0.0, 1.0, "shift"), (8, -1.0, 1.0, "shift"),
    (8, float("nan"), 1.0, "shift"), (8, 3.0, 0.0, "denoise"), (8, 3.0, 1.5, "denoise"),
])
def test_bad_settings_name_the_setting(steps, shift, denoise, word):
    with pytest.raises(ValueError, match=word):
        sampler.validate_schedule(steps, shift, denoise)


def test_latent_must_be_16_channel_4d():
    sampler.validate_latent(torch.zeros(1, 16, 8, 8))
    with pytest.raises(ValueError, match="16-channel.*EmptySD3LatentImage"):
        sampler.validate_latent(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        sampler.validate_latent(torch.zeros(16, 8, 8))


def test_record_is_json():
    import json

    rec = sampler.SamplingRecord("n", 1, 8, 3.0, "euler", "simple", 1.0, 1.0, [1.0, 0.0])
    assert json.loads(rec.to_json())["shift"] == 3.0
