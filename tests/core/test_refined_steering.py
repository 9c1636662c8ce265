"""core.refined_steering: which rows and positions of the refined caption get the vector."""

import pytest
import torch

from core import refined_steering as rs


def test_padded_length_matches_nextdit_padding():
    assert [rs.padded_length(n, 32) for n in (1, 31, 32, 33, 64)] == [32, 32, 32, 64, 64]
    assert rs.padded_length(17, None) == 17


def test_cond_rows_follow_comfyui_chunks():
    assert rs.cond_rows([0], 2).tolist() == [True, True]
    assert rs.cond_rows([1, 0], 4).tolist() == [False, False, True, True]
    assert rs.cond_rows(None, 3).tolist() == [True, True, True]
    with pytest.raises(ValueError):
        rs.cond_rows([0, 1], 3)


def test_steering_adds_to_chosen_rows_and_real_tokens_only():
    caption = torch.randn(2, 32, 8)
    delta = torch.randn(8)
    rows = torch.tensor([False, True])
    out = rs.steer_caption(caption, delta, rows, 11)
    assert torch.equal(out[0], caption[0])  # uncond row untouched
    assert torch.equal(out[1, 11:], caption[1, 11:])  # padding untouched
    assert torch.equal(out[1, :11], caption[1, :11] + delta)
    all_positions = rs.steer_caption(caption, delta, rows, None)
    assert torch.equal(all_positions[1], caption[1] + delta)
