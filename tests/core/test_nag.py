"""core.nag: the NAG formula (checked against the paper's steps, written here) and token order."""

import pytest
import torch

from core import nag


def _z(seed, shape=(2, 7, 24)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _reference(z_pos, z_neg, phi, tau, alpha):
    """Algorithm 1 of arXiv 2505.21179 token by token, in float64."""
    out = torch.empty_like(z_pos, dtype=torch.float64)
    for b in range(z_pos.shape[0]):
        for t in range(z_pos.shape[1]):
            p, n = z_pos[b, t].double(), z_neg[b, t].double()
            g = p + (phi - 1) * (p - n)
            ratio = g.abs().sum() / p.abs().sum()
            if ratio > tau:
                g = g * tau / ratio
            out[b, t] = alpha * g + (1 - alpha) * p
    return out


@pytest.mark.parametrize("phi, tau, alpha", [(5.0, 2.5, 0.25), (3.0, 1.0, 1.0), (2.0, 100.0, 0.5)])
def test_guidance_matches_the_papers_steps(phi, tau, alpha):
    z_pos, z_neg = _z(0), _z(1)
    out = nag.nag_guidance(z_pos, z_neg, phi, tau, alpha)
    assert torch.allclose(out.double(), _reference(z_pos, z_neg, phi, tau, alpha), atol=1e-5)


def test_the_norm_ratio_is_capped_at_tau():
    z_pos, z_neg = _z(2), -3 * _z(2)  # far from the positive: uncapped ratio would be about 17
    out = nag.nag_guidance(z_pos, z_neg, 5.0, 2.0, 1.0)
    ratio = out.norm(p=1, dim=-1) / z_pos.norm(p=1, dim=-1)
    assert torch.allclose(ratio, torch.full_like(ratio, 2.0), rtol=1e-5)


def test_alpha_zero_and_equal_branches_give_the_positive():
    z_pos, z_neg = _z(3), _z(4)
    assert torch.equal(nag.nag_guidance(z_pos, z_neg, 5.0, 2.5, 0.0), z_pos)
    assert torch.allclose(nag.nag_guidance(z_pos, z_pos, 5.0, 2.5, 0.25), z_pos, atol=1e-5)
    assert torch.allclose(nag.nag_guidance(z_pos, z_neg, 1.0, 2.5, 0.25), z_pos, atol=1e-6)


def test_bf16_inputs_come_back_in_bf16():
    out = nag.nag_guidance(_z(5).bfloat16(), _z(6).bfloat16(), 5.0, 2.5, 0.25)
    assert out.dtype == torch.bfloat16


def test_image_tokens_are_the_last_positions_of_caption_image_order():
    caption, image = torch.zeros(1, 32, 4), torch.ones(1, 48, 4)
    seq = torch.cat((caption, image), dim=1)
    assert torch.equal(nag.image_tokens(seq, 48), image)
    assert torch.equal(nag.caption_tokens(seq, 48), caption)
    with pytest.raises(ValueError):
        nag.image_tokens(seq, 81)


def test_settings_are_validated():
    nag.validate(1.0, 1.0, 0.0, 0.0)
    for args, word in (((0.5, 2.5, 0.25, 0.0), "scale"), ((5.0, 0.5, 0.25, 0.0), "tau"),
                       ((5.0, 2.5, 1.5, 0.0), "alpha"), ((5.0, 2.5, 0.25, -1.0), "end_sigma")):
        with pytest.raises(ValueError, match=word):
            nag.validate(*args)


def test_only_image_patches_of_guided_rows_are_guided():
    z_pos, z_neg = _z(7, (3, 10, 8)), _z(8, (3, 10, 8))
    rows = torch.tensor([True, False, True])
    out = nag.guide_image(z_pos, z_neg, rows, 6, 4.0, 2.0, 0.5)
    assert torch.equal(out[:, 6:], z_pos[:, 6:])  # padding tokens keep the positive
    assert torch.equal(out[1], z_pos[1])  # unguided row
    assert torch.equal(out[[0, 2], :6], nag.nag_guidance(z_pos[[0, 2], :6], z_neg[[0, 2], :6], 4.0, 2.0, 0.5))
    with pytest.raises(ValueError, match="do not fit"):
        nag.guide_image(z_pos, z_neg, rows, 11, 4.0, 2.0, 0.5)
