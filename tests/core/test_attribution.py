"""core.attribution: units, leave-one-out prompts, batching by length, maps and ranking."""

import numpy as np
import pytest
import torch

from core import attribution as attr


def test_words_and_their_removal():
    prompt = "a red fox, sitting in snow"
    assert [prompt[s:e] for s, e in attr.word_spans(prompt)] == ["a", "red", "fox", "sitting", "in", "snow"]
    text = "a well-lit fox's den"
    assert [text[s:e] for s, e in attr.word_spans(text)] == ["a", "well-lit", "fox's", "den"]
    assert attr.remove_span(prompt, 2, 5) == "a fox, sitting in snow"
    assert attr.remove_span(prompt, 6, 9) == "a red, sitting in snow"
    assert attr.remove_span(prompt, 22, 26) == "a red fox, sitting in"
    assert attr.remove_span("fox", 0, 3) == ""


def test_remove_word_takes_whole_words_only():
    assert attr.remove_word("a cat on a red cat bed", "cat") == "a on a red bed"
    assert attr.remove_word("a catalog of cats", "cat") == "a catalog of cats"
    assert attr.remove_word("a red fox", "dragon") == "a red fox"
    assert attr.remove_word("a Red fox", "red") == "a Red fox"  # case-sensitive


def test_word_variants_include_requested_words_marked_absent():
    variants = attr.word_variants("a red fox", ["dragon", "red"])
    assert [(v.label, v.kind, v.index, v.text, v.present) for v in variants] == [
        ("a", "word", 0, "red fox", True), ("red", "word", 1, "a fox", True), ("fox", "word", 2, "a red", True),
        ("dragon", "requested", -1, "a red fox", False), ("red", "requested", -1, "a fox", True)]
    assert attr.parse_words(" dragon, castle\nfox,, dragon ") == ["dragon", "castle", "fox"]


def test_token_variants_cover_the_content_tokens():
    labels = ["<|im_start|>", "user", "\n", "a", " fox", "<|im_end|>", "\n", "<|im_start|>", "assistant", "\n"]
    variants = attr.token_variants(labels, (3, 5))
    assert [(v.label, v.token_index, v.index) for v in variants] == [("a", 3, 0), (" fox", 4, 1)]


def test_batches_split_groups_by_size():
    groups = {(12, 0): list("abcde"), (11, 0): ["f"], (12, 3): ["g"]}
    assert attr.batches(groups, 2) == [["f"], ["a", "b"], ["c", "d"], ["e"], ["g"]]
    with pytest.raises(ValueError, match="batch_size"):
        attr.batches(groups, 0)


def test_change_map_and_ranking():
    base = torch.zeros(2, 2, 3)
    changed = base.clone()
    changed[0, 0] = torch.tensor([0.3, 0.6, 0.9])  # mean over channels 0.6
    maps = torch.stack([attr.change_map(changed, base), attr.change_map(base, base), attr.change_map(changed * 2, base)])
    assert torch.allclose(maps[0], torch.tensor([[0.6, 0.0], [0.0, 0.0]]))
    variants = [attr.Variant("a", "word", 0, text="x"), attr.Variant("b", "requested", -1, text="y", present=False),
                attr.Variant("c", "word", 2, text="z")]
    rows = attr.ranking(variants, maps)
    assert [r["label"] for r in rows] == ["c", "a", "b"]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert rows[0]["score"] == pytest.approx(1.2 / 4) and rows[0]["peak"] == pytest.approx(1.2)
    assert rows[2]["score"] == 0.0 and rows[2]["present"] is False
    assert "not in the prompt" in attr.describe(rows)


def test_overlays_are_titled_images_of_one_size():
    base = np.random.default_rng(0).random((32, 48, 3))
    maps = np.zeros((2, 32, 48))
    maps[0, :8, :8] = 0.5
    out = attr.overlays(base, maps, ["a", "b"], min_size=64)
    assert out.dtype == np.uint8 and out.shape[0] == 2 and out.shape[3] == 3
    assert out.shape[1] > 64 and out.shape[2] == 96  # scaled so the short side is 64, plus a title band
    assert not np.array_equal(out[0], out[1])
