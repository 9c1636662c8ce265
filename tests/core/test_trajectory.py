"""core.trajectory: per-step statistics, snapshot steps, JSON and plot."""

import json
import math

import numpy as np
import pytest
import torch

from core import trajectory as traj


def test_step_stats_match_hand_computed_values():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]]).reshape(1, 1, 2, 2)
    x0 = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).reshape(1, 1, 2, 2)
    stats = traj.step_stats(x, x0, 0.5).tolist()
    latent_norm, mean, std, x0_norm, velocity = stats
    assert latent_norm == pytest.approx(5.0)
    assert mean == pytest.approx(7 / 4)
    assert std == pytest.approx(math.sqrt(((3 - 1.75) ** 2 + (4 - 1.75) ** 2 + 2 * 1.75 ** 2) / 4))
    assert x0_norm == pytest.approx(1.0)
    # velocity (x - x0) / sigma = [[4, 8], [0, 0]] -> norm sqrt(80)
    assert velocity == pytest.approx(math.sqrt(80))
    assert math.isnan(traj.step_stats(x, x0, 0.0)[4])


def test_snapshot_steps_keep_every_kth_and_the_last():
    assert traj.snapshot_steps(8, 1) == list(range(8))
    assert traj.snapshot_steps(8, 3) == [0, 3, 6, 7]
    assert traj.snapshot_steps(8, 4) == [0, 4, 7]
    assert traj.snapshot_steps(1, 5) == [0]
    with pytest.raises(ValueError, match="every"):
        traj.snapshot_steps(8, 0)


def test_records_and_json():
    stats = torch.tensor([[1.0, 0.0, 1.0, 2.0, 3.0], [0.5, 0.1, 0.4, 2.0, float("nan")]])
    rows = traj.records([1.0, 0.5, 0.0], stats)
    assert rows[0] == {"step": 0, "sigma": 1.0, "sigma_next": 0.5, "latent_norm": 1.0, "latent_mean": 0.0,
                       "latent_std": 1.0, "x0_norm": 2.0, "velocity_norm": 3.0}
    assert rows[1]["velocity_norm"] is None and rows[1]["sigma_next"] == 0.0
    doc = json.loads(traj.to_json({"seed": 1}, rows, [0, 1]))
    assert doc["seed"] == 1 and doc["x0_steps"] == [0, 1] and len(doc["trajectory"]) == 2


def test_latent_rgb_applies_the_linear_factors():
    latent = torch.zeros(1, 2, 1, 1)
    latent[0, 0] = 1.0
    factors = [[0.2, -0.4, 1.0], [0.0, 0.0, 0.0]]  # channel 0 -> rgb (0.2, -0.4, 1.0)
    rgb = traj.latent_rgb(latent, factors, [0.0, 0.0, 0.5])
    assert rgb.shape == (1, 1, 1, 3)
    assert torch.allclose(rgb[0, 0, 0], torch.tensor([0.6, 0.3, 1.0]))  # (v + 1) / 2, clamped


def test_plot_is_an_rgb_image():
    rows = traj.records([1.0, 0.6, 0.0], torch.tensor([[1.0, 0.0, 1.0, 2.0, 3.0], [0.5, 0.1, 0.4, 2.0, 1.0]]))
    image = traj.plot(rows, "test")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[1] == 1200 and image.std() > 0
