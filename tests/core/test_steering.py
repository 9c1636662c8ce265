"""core.steering: pooling over content tokens, the difference of means, files, adding vectors."""

import json

import pytest
import torch
from safetensors.torch import save_file

from core import steering as st

TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def _vector(width=6, seed=0, **kw):
    v = torch.randn(width, generator=torch.Generator().manual_seed(seed))
    args = dict(layer=-2, template=TEMPLATE, space="embedding", prompts_a=("a cat, oil",), prompts_b=("a cat",),
                normalized=False, raw_norm=float(v.norm()))
    args.update(kw)
    return st.SteeringVector(v, **args)


def test_prompt_lists_are_lines_and_empty_is_an_error():
    assert st.parse_prompts("  one \n\n two\n", "prompts_a") == ["one", "two"]
    with pytest.raises(ValueError, match="prompts_b is empty"):
        st.parse_prompts(" \n \n", "prompts_b")


def test_template_needs_one_placeholder():
    assert st.split_template(TEMPLATE) == ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="exactly once"):
        st.split_template("no placeholder")


def test_template_span_checks_the_frame():
    assert st.template_span([1, 2, 9, 9, 9, 3], [1, 2], [3]) == (2, 5)
    with pytest.raises(ValueError, match="merges"):
        st.template_span([1, 7, 9, 3], [1, 2], [3])
    with pytest.raises(ValueError, match="no content tokens"):
        st.template_span([1, 2, 3], [1, 2], [3])


def test_vector_is_mean_of_content_means_a_minus_b():
    gen = torch.Generator().manual_seed(1)
    # prompts of different lengths: 3 template tokens, n content tokens, 5 template tokens
    a = [torch.randn(1, 3 + n + 5, 4, generator=gen) for n in (2, 5)]
    b = [torch.randn(1, 3 + n + 5, 4, generator=gen) for n in (1, 3, 4)]
    spans_a, spans_b = [(3, 3 + n) for n in (2, 5)], [(3, 3 + n) for n in (1, 3, 4)]
    pooled_a = [st.pool_content(t, s) for t, s in zip(a, spans_a)]
    pooled_b = [st.pool_content(t, s) for t, s in zip(b, spans_b)]
    v = st.make_vector(pooled_a, pooled_b, layer=-2, template=TEMPLATE, space="embedding",
                       prompts_a=["x", "y"], prompts_b=["p", "q", "r"], normalize=False)
    # written out by hand: sums of content rows divided by counts
    mean_a = sum(t[0, 3:-5].sum(0) / (t.shape[1] - 8) for t in a) / 2
    mean_b = sum(t[0, 3:-5].sum(0) / (t.shape[1] - 8) for t in b) / 3
    assert torch.allclose(v.vector, mean_a - mean_b, atol=1e-6)
    assert v.vector.dtype == torch.float32 and v.width == 4
    assert v.raw_norm == pytest.approx(float((mean_a - mean_b).norm()), rel=1e-5)
    unit = st.make_vector(pooled_a, pooled_b, layer=-2, template=TEMPLATE, space="embedding",
                          prompts_a=["x", "y"], prompts_b=["p", "q", "r"], normalize=True)
    assert unit.norm == pytest.approx(1.0, abs=1e-6) and unit.normalized
    assert torch.allclose(unit.vector * unit.raw_norm, v.vector, atol=1e-5)


def test_template_tokens_do_not_enter_the_pool():
    tokens = torch.zeros(1, 10, 3)
    tokens[:, :3] = 1000.0  # huge template activations
    tokens[:, -5:] = -1000.0
    tokens[:, 3:5] = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    assert torch.equal(st.pool_content(tokens, (3, 5)), torch.tensor([2.0, 2.0, 2.0]))


def test_identical_sets_cannot_be_normalised():
    p = [torch.ones(3)]
    with pytest.raises(ValueError, match="same vector"):
        st.make_vector(p, p, layer=-2, template=TEMPLATE, space="embedding", prompts_a=["a"], prompts_b=["a"],
                       normalize=True)


def test_save_and_load_round_trip_bit_for_bit(tmp_path):
    v = _vector(width=16, prompts_a=("ein Ölgemälde", "b"), prompts_b=("c",), normalized=True, raw_norm=3.25)
    path = tmp_path / "v.safetensors"
    st.save_vector(v, str(path))
    back = st.load_vector(str(path))
    assert torch.equal(back.vector, v.vector) and back.vector.dtype == torch.float32
    assert back.metadata() == v.metadata()  # every field but the name (which is the file's)
    assert (back.layer, back.template, back.space, back.prompts_a, back.prompts_b, back.normalized, back.raw_norm) == \
        (v.layer, v.template, v.space, v.prompts_a, v.prompts_b, v.normalized, v.raw_norm)
    assert back.name == "v"
    st.save_vector(back, str(tmp_path / "again.safetensors"))
    again = st.load_vector(str(tmp_path / "again.safetensors"))
    assert torch.equal(again.vector, v.vector) and again.metadata() == v.metadata()


def test_metadata_describes_the_vector():
    meta = _vector(width=5, layer=-7).metadata()
    assert meta["layer"] == "-7" and meta["width"] == "5" and meta["space"] == "embedding"
    assert json.loads(meta["prompts_a"]) == ["a cat, oil"] and meta["count_b"] == "1"
    assert all(isinstance(v, str) for v in meta.values())


def test_files_that_are_not_steering_vectors_get_clear_errors(tmp_path):
    garbage = tmp_path / "pickle.safetensors"
    garbage.write_bytes(b"\x80\x04\x95 this is a pickle, not safetensors")
    with pytest.raises(ValueError, match="pickle.safetensors is not a readable safetensors file"):
        st.load_vector(str(garbage))
    other = tmp_path / "lora.safetensors"
    save_file({"lora_up.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(ValueError, match="not a Z-Image Lab steering vector"):
        st.load_vector(str(other))
    with pytest.raises(ValueError, match="not a .safetensors file"):
        st.load_vector(str(tmp_path / "vector.pt"))


def test_width_check_names_both_widths():
    with pytest.raises(ValueError, match="width 6 .* has width 2560"):
        st.check_width(_vector(width=6), 2560, "the conditioning")
    st.check_width(_vector(width=6), 6, "the conditioning")


def test_deltas_compose_by_adding_and_zero_alphas_add_nothing():
    v1, v2 = _vector(seed=1), _vector(seed=2)
    assert st.combined_delta([(v1, 0.0), (v2, 0.0)]) is None
    assert torch.allclose(st.combined_delta([(v1, 0.5), (v2, -2.0)]), 0.5 * v1.vector - 2.0 * v2.vector)
    with pytest.raises(ValueError, match="different widths"):
        st.combined_delta([(v1, 1.0), (_vector(width=3), 1.0)])


def test_adding_to_content_tokens_leaves_template_tokens_bitwise():
    tokens = torch.randn(2, 12, 6)
    delta = torch.randn(6)
    out = st.add_to_tokens(tokens, delta, (3, 7))
    assert torch.equal(out[:, :3], tokens[:, :3]) and torch.equal(out[:, 7:], tokens[:, 7:])
    assert torch.equal(out[:, 3:7], tokens[:, 3:7] + delta)
    assert torch.equal(st.add_to_tokens(tokens, delta, None), tokens + delta)


def test_layers_use_the_packs_numbering_and_old_files_stay_readable(tmp_path):
    v = _vector(width=4, layer=-1)
    assert v.metadata()["layer_numbering"] == "hidden_states" and v.pack_layer == -1
    path = tmp_path / "old.safetensors"
    meta = {k: val for k, val in v.metadata().items() if k != "layer_numbering"}  # a file saved before the key
    save_file({st.TENSOR_KEY: v.vector}, str(path), metadata=meta)
    old = st.load_vector(str(path))
    assert old.numbering == "clip_layer" and old.pack_layer is None  # clip_layer -1: before the final norm
    assert "clip_layer -1" in old.describe()
    assert "no encoder of the pack produces" in st.layer_mismatch(old, {"layer": -1})
    meta["layer"] = "-3"
    save_file({st.TENSOR_KEY: v.vector}, str(path), metadata=meta)
    assert st.load_vector(str(path)).pack_layer == -3  # -2 ... -n mean the same in both numberings
    meta["layer_numbering"] = "counted somehow"
    save_file({st.TENSOR_KEY: v.vector}, str(path), metadata=meta)
    with pytest.raises(ValueError, match="unknown layer_numbering"):
        st.load_vector(str(path))


def test_layer_mismatch_fires_for_other_layers_and_blends():
    v = _vector(layer=-1)
    assert st.layer_mismatch(v, {"layer": -1}) is None
    assert "encoded at layer -2" in st.layer_mismatch(v, {"layer": -2})
    assert "assumed: stock encoders use -2" in st.layer_mismatch(v, {})
    assert "blend of layers" in st.layer_mismatch(v, {"layer": None, "layer_blend": [[-2, 0.5], [-1, 0.5]]})
