"""core.embedding_negative: the three modes, written out independently here."""

import pytest
import torch

from core import embedding_negative as en


def _tokens(length=9, width=16, seed=0):
    return torch.randn(1, length, width, generator=torch.Generator().manual_seed(seed))


def test_negative_pools_its_content_tokens_whatever_its_length():
    neg_a = _tokens(length=20, seed=1)
    neg_b = _tokens(length=11, seed=2)
    n = en.pooled_direction([(neg_a, (3, 15)), (neg_b, (3, 6))])
    expected = (neg_a[0, 3:15].sum(0) / 12 + neg_b[0, 3:6].sum(0) / 3) / 2
    assert torch.allclose(n, expected, atol=1e-6)


@pytest.mark.parametrize("mode", en.MODES)
def test_strength_zero_returns_the_positive_itself(mode):
    x = _tokens()
    assert en.apply_negative(x, torch.randn(16), mode, 0.0, None) is x


def test_subtract():
    x, n = _tokens(), torch.randn(16)
    out = en.apply_negative(x, n, "subtract", 0.3, None)
    for t in range(x.shape[1]):
        assert torch.allclose(out[0, t], x[0, t] - 0.3 * n, atol=1e-6)


def test_orthogonal_at_strength_one_leaves_every_token_orthogonal():
    x, n = _tokens(length=30, width=64, seed=3), torch.randn(64) * 50  # norm does not matter
    out = en.apply_negative(x, n, "orthogonal", 1.0, None)
    cos = torch.nn.functional.cosine_similarity(out[0].double(), n.double()[None], dim=-1)
    assert cos.abs().max() < 1e-6
    before = torch.nn.functional.cosine_similarity(x[0].double(), n.double()[None], dim=-1)
    assert before.abs().max() > 0.1
    # the part orthogonal to n is kept: out = x - (x.n / n.n) n
    expected = x[0] - (x[0] @ n)[:, None] / (n @ n) * n
    assert torch.allclose(out[0], expected, atol=1e-5)


def test_orthogonal_at_half_strength_halves_the_component():
    x, n = _tokens(width=8, seed=4), torch.randn(8)
    unit = n / n.norm()
    out = en.apply_negative(x, n, "orthogonal", 0.5, None)
    assert torch.allclose(out[0] @ unit, 0.5 * (x[0] @ unit), atol=1e-5)


def test_contrastive_moves_directions_and_keeps_norms():
    x, n = _tokens(width=32, seed=5), torch.randn(32)
    out = en.apply_negative(x, n, "contrastive", 0.4, None)
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1), rtol=1e-5)
    for t in range(x.shape[1]):
        u = x[0, t] / x[0, t].norm() - 0.4 * n / n.norm()
        assert torch.allclose(out[0, t] / out[0, t].norm(), u / u.norm(), atol=1e-5)
    cos = lambda a: torch.nn.functional.cosine_similarity(a[0], n[None], dim=-1)
    assert torch.all(cos(out) < cos(x))


def test_content_scope_leaves_template_tokens_bitwise():
    x, n = _tokens(length=12), torch.randn(16)
    out = en.apply_negative(x, n, "orthogonal", 1.0, (3, 7))
    assert torch.equal(out[:, :3], x[:, :3]) and torch.equal(out[:, 7:], x[:, 7:])
    assert not torch.equal(out[:, 3:7], x[:, 3:7])


def test_zero_direction_and_bad_mode_are_clear_errors():
    with pytest.raises(ValueError, match="zero vector"):
        en.apply_negative(_tokens(), torch.zeros(16), "orthogonal", 1.0, None)
    with pytest.raises(ValueError, match="mode is 'cfg'"):
        en.apply_negative(_tokens(), torch.ones(16), "cfg", 1.0, None)
    with pytest.raises(ValueError, match="width 8 but positive has width 16"):
        en.apply_negative(_tokens(), torch.ones(8), "subtract", 1.0, None)
    with pytest.raises(ValueError, match="negative is empty"):
        en.pooled_direction([])
