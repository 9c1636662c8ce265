"""core.token_manipulation: content orders, positions, and re-indexing with the template left in place."""

import pytest
import torch

from core import token_manipulation as tm

PREFIX, SUFFIX = 3, 5  # ComfyUI's Z-Image template around the content


def caption(n_content, batch=1, width=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, PREFIX + n_content + SUFFIX, width, generator=g)


def rows(t):
    return [tuple(r.tolist()) for r in t.reshape(-1, t.shape[-1])]


def test_none_is_identity():
    x = caption(7)
    out, index = tm.manipulate(x, (PREFIX, PREFIX + 7), tm.content_order("none", 7))
    assert torch.equal(out, x) and torch.equal(index, torch.arange(x.shape[1]))


def test_shuffle_is_a_seeded_permutation_of_the_content_rows_only():
    x = caption(12, batch=2)
    span = (PREFIX, PREFIX + 12)
    order = tm.content_order("shuffle", 12, seed=5)
    out, _ = tm.manipulate(x, span, order)
    assert sorted(order) == list(range(12)) and order != list(range(12))
    assert tm.content_order("shuffle", 12, seed=5) == order
    assert tm.content_order("shuffle", 12, seed=6) != order
    assert torch.equal(out[:, :PREFIX], x[:, :PREFIX]) and torch.equal(out[:, -SUFFIX:], x[:, -SUFFIX:])
    for b in range(2):  # the same multiset of token vectors, in another order
        assert sorted(rows(out[b, PREFIX:-SUFFIX])) == sorted(rows(x[b, PREFIX:-SUFFIX]))
        assert rows(out[b, PREFIX:-SUFFIX]) != rows(x[b, PREFIX:-SUFFIX])
        for k, src in enumerate(order):
            assert torch.equal(out[b, PREFIX + k], x[b, PREFIX + src])


def test_reverse_and_duplicate():
    x = caption(4)
    out, _ = tm.manipulate(x, (PREFIX, PREFIX + 4), tm.content_order("reverse", 4))
    assert torch.equal(out[0, PREFIX:PREFIX + 4], x[0, PREFIX:PREFIX + 4].flip(0))
    out, _ = tm.manipulate(x, (PREFIX, PREFIX + 4), tm.content_order("duplicate", 4, repeats=3))
    content = x[:, PREFIX:PREFIX + 4]
    assert torch.equal(out, torch.cat([x[:, :PREFIX], content, content, content, x[:, -SUFFIX:]], dim=1))
    assert tm.content_order("duplicate", 4, repeats=1) == [0, 1, 2, 3]


def test_keep_drop_front_and_back_load():
    assert tm.content_order("keep", 8, positions=[5, 1, 2]) == [1, 2, 5]
    assert tm.content_order("drop", 8, positions=[5, 1, 2]) == [0, 3, 4, 6, 7]
    assert tm.content_order("front_load", 8, positions=[5, 6]) == [5, 6, 0, 1, 2, 3, 4, 7]
    assert tm.content_order("back_load", 8, positions=[1, 0]) == [2, 3, 4, 5, 6, 7, 1, 0]


def test_positions_parse_inclusive_ranges_in_order_without_repeats():
    assert tm.parse_positions("0-3, 7", 10) == [0, 1, 2, 3, 7]
    assert tm.parse_positions("5, 2-3, 5", 10) == [5, 2, 3]
    with pytest.raises(ValueError, match="positions: position 10 is out of range: the prompt has 10 content tokens"):
        tm.parse_positions("8-10", 10)
    with pytest.raises(ValueError, match="cannot read 'a'"):
        tm.parse_positions("a", 10)


@pytest.mark.parametrize("mode, kwargs, words", [
    ("keep", {}, "positions is empty"),
    ("drop", {"positions": [0, 1, 2]}, "leave no prompt"),
    ("duplicate", {"repeats": 0}, "repeats is 0"),
    ("scramble", {}, "mode is 'scramble'"),
])
def test_bad_settings(mode, kwargs, words):
    with pytest.raises(ValueError, match=words):
        tm.content_order(mode, 3, **kwargs)


def test_full_index_keeps_the_template_rows():
    index = tm.full_index((3, 6), 11, [2, 0])
    assert index.tolist() == [0, 1, 2, 5, 3, 6, 7, 8, 9, 10]
