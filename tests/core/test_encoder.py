"""core.encoder: layer numbering and blends, long-prompt modes (checked against loop implementations), cache."""

import gc

import numpy as np
import pytest
import torch

from core import encoder

N = 6  # decoder layers of the fake hidden states below


def fake_hidden(batch=1, length=9, width=4, seed=0):
    """[B, N+1, L, W] where hidden state i is filled with distinct random values."""
    return torch.randn(batch, N + 1, length, width, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- layers

def test_layers_count_like_transformers_hidden_states():
    assert encoder.hidden_index(-1, 36) == 36  # last, after the final norm
    assert encoder.hidden_index(-2, 36) == 35  # Z-Image's: output of decoder layer 34
    assert encoder.hidden_index(-36, 36) == 1  # output of the first decoder layer
    for bad in (0, 1, -37, 2.5, True):
        with pytest.raises(ValueError, match="out of range.*36 layers"):
            encoder.hidden_index(bad, 36)


def test_single_layer_is_an_exact_copy_of_that_hidden_state():
    hs = fake_hidden()
    for layer in (-1, -2, -N):
        out = encoder.select_layers(hs, [(layer, 1.0)])
        assert torch.equal(out, hs[:, N + 1 + layer])


def test_blend_is_the_normalised_weighted_sum():
    hs = fake_hidden(batch=2)
    recipe = encoder.parse_layer_blend("-2:0.7, -5:0.3", N)
    assert recipe == [(-2, pytest.approx(0.7)), (-5, pytest.approx(0.3))]
    expected = 0.7 * hs[:, N - 1] + 0.3 * hs[:, N - 4]
    assert torch.allclose(encoder.select_layers(hs, recipe), expected, atol=1e-6)


def test_blend_weights_are_normalised_and_default_to_one():
    assert encoder.parse_layer_blend("-1:2, -3:2", N) == [(-1, 0.5), (-3, 0.5)]
    assert encoder.parse_layer_blend("-1, -2, -3, -4", N) == [(-1, 0.25), (-2, 0.25), (-3, 0.25), (-4, 0.25)]
    assert encoder.parse_layer_blend(" -2 : 1.5e0 ;-3:-0.5 ", N) == [(-2, 1.5), (-3, -0.5)]
    assert encoder.parse_layer_blend("  ", N) == []
    assert encoder.layer_recipe(-3, "", N) == [(-3, 1.0)]
    assert encoder.layer_recipe(-3, "-1:1", N) == [(-1, 1.0)]


@pytest.mark.parametrize("spec, words", [
    ("-2:0.7 -5:0.3", ["malformed", "layer:weight"]),
    ("-2:abc", ["malformed"]),
    ("two:1", ["malformed"]),
    ("-2:0.5, -9:0.5", ["layer_blend layer -9", "out of range", f"{N} layers"]),
    ("-2:1, -2:1", ["twice"]),
    ("-2:1, -3:-1", ["sum", "0"]),
])
def test_bad_blends_are_named(spec, words):
    with pytest.raises(ValueError) as err:
        encoder.parse_layer_blend(spec, N)
    for word in words:
        assert word in str(err.value)


# ---------------------------------------------------------------- long prompts

def seq(length, width=3, seed=1):
    return torch.randn(1, length, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ["truncate", "interpolate", "pool", "attention_pool"])
@pytest.mark.parametrize("length, budget, content", [(40, 16, (3, 35)), (100, 10, (3, 95)), (50, 7, (3, 45)), (20, 2, None)])
def test_every_mode_returns_exactly_the_budget_and_keeps_the_ends(mode, length, budget, content):
    x = seq(length)
    out = encoder.fit_to_budget(x, mode, budget, content)
    assert out.tokens.shape == (1, budget, 3)
    assert torch.equal(out.tokens[:, 0], x[:, 0]) and torch.equal(out.tokens[:, -1], x[:, -1])
    head, tail = encoder.keep_ends(length, budget, content)
    if content is not None and head + tail < budget and (head, tail) == (content[0], length - content[1]):
        assert torch.equal(out.tokens[:, :head], x[:, :head])              # template before the prompt
        assert torch.equal(out.tokens[:, budget - tail:], x[:, length - tail:])  # template after it
        assert out.content_span == (head, budget - tail)
    assert out.record["tokens_in"] == length and out.record["tokens_out"] == budget and out.record["over_budget"]


def test_template_that_does_not_fit_falls_back_to_first_and_last():
    assert encoder.keep_ends(100, 10, (3, 95)) == (3, 5)
    assert encoder.keep_ends(100, 8, (3, 95)) == (1, 1)     # 3 + 5 leaves no room for the prompt
    assert encoder.keep_ends(100, 8, None) == (1, 1)


def test_short_prompts_and_mode_none_pass_through():
    x = seq(30)
    for mode in encoder.LONG_PROMPT_MODES:
        out = encoder.fit_to_budget(x, mode, 30, (3, 25))
        assert out.tokens is x and not out.record["over_budget"]
    out = encoder.fit_to_budget(x, "none", 10, (3, 25))
    assert out.tokens is x and out.record["over_budget"] and out.record["tokens_out"] == 30
    assert "OVER BUDGET" in encoder.describe_long_prompt(out.record)


def _middle(x, head, tail):
    return x[0, head:x.shape[1] - tail].numpy().astype(np.float64)


def test_truncate_keeps_the_start_of_the_prompt():
    x = seq(40)
    out = encoder.fit_to_budget(x, "truncate", 16, (3, 35)).tokens
    assert torch.equal(out[0], torch.cat([x[0, :3], x[0, 3:3 + 8], x[0, 35:]]))


def test_interpolate_is_linear_resampling_of_the_prompt():
    x = seq(40)
    out = encoder.fit_to_budget(x, "interpolate", 16, (3, 35)).tokens[0, 3:11].numpy()
    mid = _middle(x, 3, 5)                      # 32 prompt tokens -> 8
    positions = np.linspace(0, len(mid) - 1, 8)
    expected = np.stack([np.interp(positions, np.arange(len(mid)), mid[:, c]) for c in range(mid.shape[1])], 1)
    assert np.allclose(out, expected, atol=1e-5)


def test_pool_averages_adaptive_regions():
    x = seq(41)
    out = encoder.fit_to_budget(x, "pool", 15, (3, 36)).tokens[0, 3:10].numpy()
    mid = _middle(x, 3, 5)                      # 33 prompt tokens -> 7
    n_in, n_out = len(mid), 7
    expected = np.stack([mid[(i * n_in) // n_out: -((-(i + 1) * n_in) // n_out)].mean(0) for i in range(n_out)])
    assert np.allclose(out, expected, atol=1e-5)


def test_attention_pool_weights_tokens_by_how_much_they_differ_from_neighbours():
    x = seq(41, width=5)
    out = encoder.fit_to_budget(x, "attention_pool", 15, (3, 36)).tokens[0, 3:10].numpy()
    mid = _middle(x, 3, 5)
    n_in, n_out = len(mid), 7
    unit = mid / np.linalg.norm(mid, axis=1, keepdims=True)
    score = np.empty(n_in)
    for j in range(n_in):
        neighbours = [k for k in range(j - 2, j + 3) if k != j and 0 <= k < n_in]
        score[j] = 1 - np.mean([unit[j] @ unit[k] for k in neighbours])
    expected = []
    for i in range(n_out):
        members = [j for j in range(n_in) if (j * n_out) // n_in == i]
        w = np.exp(score[members] / encoder.ATTENTION_POOL_TEMPERATURE)
        expected.append((w[:, None] * mid[members]).sum(0) / w.sum())
    assert np.allclose(out, np.stack(expected), atol=1e-5)
    # it is not plain pooling: distinctive tokens pull their region's vector
    assert not np.allclose(out, encoder.fit_to_budget(x, "pool", 15, (3, 36)).tokens[0, 3:10].numpy(), atol=1e-3)


def test_bad_mode_and_budget_are_named():
    with pytest.raises(ValueError, match="long_prompt_mode.*truncate"):
        encoder.fit_to_budget(seq(5), "squash", 3)
    with pytest.raises(ValueError, match="token_budget is 1"):
        encoder.fit_to_budget(seq(5), "pool", 1)


def test_token_span_counts_tokens_before_and_through_the_prompt():
    text = "<s> user one two three </s> tail"
    words = lambda s: len(s.split())  # a whitespace tokenizer stands in for Qwen's
    start = text.index("one")
    assert encoder.token_span(words, text, (start, start + len("one two three"))) == (2, 5)
    assert encoder.token_span(words, text, None) is None


# ---------------------------------------------------------------- cache

class Owner(torch.nn.Module):
    pass


def entry(length=4, width=8):
    return encoder.Encoded(torch.zeros(1, 3, length, width), None, length, (1, length - 1))


def test_cache_encodes_each_text_once_per_owner():
    cache = encoder.HiddenStateCache(max_bytes=10**9)
    a, b = Owner(), Owner()
    calls = []
    make = lambda: calls.append(1) or entry()
    first, hit = cache.get_or_encode(a, ("x",), make)
    assert not hit
    again, hit = cache.get_or_encode(a, ("x",), make)
    assert hit and again is first
    cache.get_or_encode(b, ("x",), make)          # other weights: encoded again
    cache.get_or_encode(a, ("y",), make)
    assert len(calls) == 3 and cache.forward_passes == 3 and cache.hits == 1 and cache.entries == 3


def test_cache_drops_least_recently_used_past_its_size_and_entries_of_freed_encoders():
    size = entry().nbytes
    cache = encoder.HiddenStateCache(max_bytes=2 * size)
    owner = Owner()
    for key in ("a", "b"):
        cache.get_or_encode(owner, key, entry)
    cache.get_or_encode(owner, "a", entry)        # a is now the most recent
    cache.get_or_encode(owner, "c", entry)        # evicts b
    assert cache.entries == 2 and cache.evictions == 1
    assert cache.get_or_encode(owner, "a", entry)[1] and not cache.get_or_encode(owner, "b", entry)[1]
    too_big = lambda: encoder.Encoded(torch.zeros(1, 3, 100, 8), None, 100, None)
    cache.get_or_encode(owner, "huge", too_big)   # larger than the whole cache: computed, not stored
    assert cache.nbytes <= 2 * size
    del owner
    gc.collect()
    assert cache.entries == 0 and cache.stats()["encoders"] == 0
