"""core.chunked_encode: window plans, blending weights and the join."""

import pytest
import torch

from core import chunked_encode as ce


@pytest.mark.parametrize("n, window, overlap", [(10, 480, 64), (480, 480, 64), (481, 480, 64), (1260, 480, 64),
                                                (5000, 100, 0), (777, 64, 31)])
def test_windows_cover_every_token_with_full_windows_and_enough_overlap(n, window, overlap):
    windows = ce.plan_windows(n, window, overlap)
    assert windows[0][0] == 0 and windows[-1][1] == n
    covered = torch.zeros(n, dtype=torch.int64)
    for a, b in windows:
        covered[a:b] += 1
        assert b - a == min(window, n) or (a, b) == windows[-1] and b - a > overlap
    assert covered.min() >= 1 and covered.max() <= 2
    for (a0, b0), (a1, b1) in zip(windows, windows[1:]):
        assert b0 - a1 == overlap


@pytest.mark.parametrize("join", ce.JOIN_MODES)
def test_weights_sum_to_one_and_crossfade_ramps_across_the_overlap(join):
    windows = ce.plan_windows(1260, 480, 64)
    w = ce.window_weights(windows, 1260, join)
    assert torch.allclose(w.sum(0), torch.ones(1260, dtype=torch.float64))
    a1, b0 = windows[1][0], windows[0][1]
    if join == "average":
        assert torch.allclose(w[0, a1:b0], torch.full((b0 - a1,), 0.5, dtype=torch.float64))
    else:
        ramp = w[1, a1:b0]
        assert torch.all(ramp[1:] > ramp[:-1]) and 0 < ramp[0] < 0.05 and 0.95 < ramp[-1] < 1
    assert torch.all(w[0, :a1] == 1) and torch.all(w[1, b0:windows[2][0]] == 1)
    assert len(windows) == 3 and windows[-1] == (832, 1260)


def test_join_of_consistent_windows_is_the_sequence_itself():
    n, width = 1000, 6
    truth = torch.randn(1, n, width)
    windows = ce.plan_windows(n, 300, 50)
    joined = ce.join_windows([truth[:, a:b] for a, b in windows], windows, n, "crossfade")
    assert torch.allclose(joined, truth, atol=1e-6)


def test_window_tokens_wrap_each_slice_in_the_prompt_template():
    tokens = ["<s>", "user", "\n"] + list(range(10)) + ["</s>", "\n", "<s>", "assistant", "\n"]
    out = ce.window_tokens(tokens, [(0, 6), (4, 10)], 3, 5)
    assert out[0] == tokens[:3] + list(range(6)) + tokens[-5:]
    assert out[1] == tokens[:3] + list(range(4, 10)) + tokens[-5:]


def test_assemble_frames_the_content():
    first, last = torch.zeros(1, 10, 2), torch.ones(1, 12, 2)
    content = torch.full((1, 7, 2), 5.0)
    out = ce.assemble(first, last, content, 3, 5)
    assert out.shape == (1, 15, 2)
    assert torch.equal(out[0, :3], first[0, :3]) and torch.equal(out[0, -5:], last[0, -5:]) and torch.all(out[0, 3:10] == 5)


@pytest.mark.parametrize("window, overlap, join, word", [(4, 0, "crossfade", "window"), (100, 50, "crossfade", "overlap"),
                                                         (100, -1, "average", "overlap"), (100, 10, "max", "join")])
def test_bad_settings_name_the_input(window, overlap, join, word):
    with pytest.raises(ValueError, match=word):
        ce.validate(window, overlap, join)
