"""core.conditioning: content spans, metadata and attention-mask bookkeeping."""

import pytest
import torch

from core import conditioning as cc


def test_default_span_excludes_the_template_tokens():
    # "<|im_start|>user\n" + 4 content tokens + "<|im_end|>\n<|im_start|>assistant\n" = 3 + 4 + 5
    assert cc.content_span({}, 12) == (3, 7)


def test_recorded_span_wins():
    assert cc.content_span(cc.with_metadata({}, content_span=[10, 14]), 20) == (10, 14)


def test_no_content_is_an_error():
    with pytest.raises(ValueError, match="no content tokens"):
        cc.content_span({}, 8)


def test_with_metadata_does_not_mutate():
    extras = {"zimage_lab": {"layer": -2}}
    out = cc.with_metadata(extras, template="x")
    assert extras == {"zimage_lab": {"layer": -2}}
    assert out["zimage_lab"] == {"layer": -2, "template": "x"}


def test_changing_token_count_replaces_the_mask():
    cond = [[torch.randn(1, 10, 4), {"attention_mask": torch.ones(1, 10, dtype=torch.long), "pooled_output": None}]]
    out = cc.map_conditioning(cond, lambda t, e: (t[:, :6], e))
    assert out[0][0].shape == (1, 6, 4)
    assert out[0][1]["attention_mask"].shape == (1, 6)
    assert cond[0][1]["attention_mask"].shape == (1, 10)
    same = cc.map_conditioning(cond, lambda t, e: (t, e))
    assert same[0][1]["attention_mask"] is cond[0][1]["attention_mask"]
