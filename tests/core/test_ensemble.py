"""core.ensemble: seed lists, step windows, the prediction average and image blends."""

import pytest
import torch

from core import ensemble as ens


def test_parse_seeds_lists_and_ranges():
    assert ens.parse_seeds("1, 2, 5") == [1, 2, 5]
    assert ens.parse_seeds("10-13") == [10, 11, 12, 13]
    assert ens.parse_seeds(" 7 ;8\n0-1 ") == [7, 8, 0, 1]
    assert ens.parse_seeds("18446744073709551615") == [2**64 - 1]


@pytest.mark.parametrize("text, words", [
    ("", "seeds is empty"), ("  , ", "seeds is empty"), ("1, x", "cannot read 'x'"), ("5-2", "runs backwards"),
    ("1, 2, 1", "more than once"), ("18446744073709551616", "larger than the largest seed"), ("-3", "cannot read"),
])
def test_bad_seed_lists_are_named(text, words):
    with pytest.raises(ValueError, match=words):
        ens.parse_seeds(text)


def test_step_window_selects_sigmas_of_the_chosen_steps():
    sigmas = torch.tensor([1.0, 0.9, 0.7, 0.4, 0.0])  # float32, as ComfyUI's samplers hold them
    window = ens.step_window(sigmas, 1, 3)
    candidates = torch.tensor([1.0, 0.95, 0.9, 0.8, 0.7, 0.5, 0.4, 0.2])
    inside = [round(float(s), 2) for s in candidates if ens.in_window(s, window)]
    # steps 1 and 2 start at 0.9 and 0.7; evaluations from 0.9 down to 0.4 (exclusive) belong to them
    assert inside == [0.9, 0.8, 0.7, 0.5]
    assert ens.step_window(sigmas, 0, ens.ALL_STEPS) == (1.0, 0.0)
    assert ens.in_window(0.5, ens.step_window(sigmas.double(), 1, 3)) is True
    with pytest.raises(ValueError, match="would average no step"):
        ens.step_window(sigmas, 3, 3)
    with pytest.raises(ValueError, match="would average no step"):
        ens.step_window(sigmas, 4, ens.ALL_STEPS)


def test_prediction_average_is_the_row_mean_and_identity_for_one_row():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, 4, 4, generator=gen)
    avg = ens.average_prediction(x)
    expected = (x[0] + x[1] + x[2]) / 3
    assert avg.shape == x.shape
    for row in avg:
        assert torch.allclose(row, expected, atol=1e-6)
    one = x[:1].clone()
    assert torch.equal(ens.average_prediction(one), one)
    assert torch.equal(ens.average_latents(one), one)
    assert torch.allclose(ens.average_latents(x)[0], expected, atol=1e-6)


def test_seed_spread_is_zero_for_agreeing_rows_and_the_std_otherwise():
    same = torch.ones(4, 2, 2, 2)
    assert float(ens.seed_spread(same)) == 0.0
    two = torch.stack([torch.zeros(2, 2, 2), torch.full((2, 2, 2), 2.0)])
    assert float(ens.seed_spread(two)) == pytest.approx(1.0)  # population std of {0, 2}


def test_blend_images_mean_median_and_spread():
    a = torch.zeros(1, 4, 4, 3)
    b = torch.full((1, 4, 4, 3), 0.5)
    c = torch.ones(1, 4, 4, 3)
    images = torch.cat([a, b, c])
    mean, spread = ens.blend_images(images, "mean")
    assert mean.shape == (1, 4, 4, 3) and torch.allclose(mean, torch.full_like(mean, 0.5))
    assert spread.shape == (1, 4, 4)
    assert torch.allclose(spread, torch.full_like(spread, (1 / 6) ** 0.5))
    median, _ = ens.blend_images(torch.cat([a, a, c]), "median")
    assert torch.equal(median, a)
    single, zero = ens.blend_images(b, "mean")
    assert torch.equal(single, b) and float(zero.abs().max()) == 0.0
    with pytest.raises(ValueError, match="method"):
        ens.blend_images(images, "max")
    with pytest.raises(ValueError, match="IMAGE batch"):
        ens.blend_images(torch.zeros(4, 4, 3), "mean")


def test_modes_are_checked():
    for mode in ens.MODES:
        ens.validate_mode(mode)
    with pytest.raises(ValueError, match="prediction average"):
        ens.validate_mode("average")
