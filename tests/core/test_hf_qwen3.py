"""core.hf_qwen3: folder checks, config from weights, single files, hidden-state order (transformers only)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from core import hf_qwen3

SMALL = {"vocab_size": 500, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
         "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16}


def small_model(seed=0):
    torch.manual_seed(seed)
    config = hf_qwen3.qwen3_config({"model_type": "qwen3", **SMALL, **hf_qwen3.QWEN3_DEFAULTS})
    from transformers import Qwen3Model

    return Qwen3Model(config).eval()


def comfy_style_state_dict(model):
    """Keys as in ComfyUI's qwen_3_4b.safetensors: the Qwen3Model's under 'model.'."""
    return {f"model.{k}": v.contiguous() for k, v in model.state_dict().items() if "rotary" not in k}


def write_folder(path, model, config=None, tokenizer=True):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config or {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
                                                             **SMALL, **hf_qwen3.QWEN3_DEFAULTS}))
    save_file(comfy_style_state_dict(model), str(path / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer:
        (path / "vocab.json").write_text("{}")
        (path / "merges.txt").write_text("")
    return path


def test_config_is_read_off_the_weights():
    config = hf_qwen3.config_from_state_dict(comfy_style_state_dict(small_model()))
    assert {k: config[k] for k in SMALL} == SMALL
    with pytest.raises(ValueError, match="not a Qwen3 state dict"):
        hf_qwen3.config_from_state_dict({"model.embed_tokens.weight": torch.zeros(3, 4)})


def test_hidden_states_are_embeddings_then_each_layer_then_the_normed_last():
    model = small_model()
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    hs = hf_qwen3.hidden_states(model, input_ids=ids)
    assert hs.shape == (1, 5, 5, 32) and hs.dtype == torch.float32
    assert torch.equal(hs[:, 0], model.embed_tokens(ids))
    captured = []
    hooks = [layer.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
             for layer in model.layers]
    with torch.no_grad():
        last = model(input_ids=ids).last_hidden_state
    for h in hooks:
        h.remove()
    for i in range(3):
        assert torch.allclose(hs[:, i + 1], captured[i], atol=1e-6)
    assert torch.allclose(hs[:, 4], last, atol=1e-6)                   # layer -1: after the final norm
    assert torch.allclose(hs[:, 4], model.norm(captured[3]), atol=1e-6)
    assert not torch.allclose(hs[:, 4], captured[3], atol=1e-3)


def test_folder_and_single_file_load_the_same_model(tmp_path):
    model = small_model(1)
    folder = write_folder(tmp_path / "qwen3-small", model)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    expected = hf_qwen3.hidden_states(model, input_ids=ids)
    from_folder = hf_qwen3.load_folder(folder)
    from_file = hf_qwen3.load_single_file(folder / "model.safetensors")
    assert torch.allclose(hf_qwen3.hidden_states(from_folder, input_ids=ids), expected, atol=1e-6)
    assert torch.allclose(hf_qwen3.hidden_states(from_file, input_ids=ids), expected, atol=1e-6)
    assert hf_qwen3.num_layers(from_file) == 4 and hf_qwen3.hidden_size(from_file) == 32


def test_folders_that_are_not_qwen3_models_are_named(tmp_path):
    model = small_model()
    with pytest.raises(ValueError, match="empty is not a Hugging Face model folder: it has no config.json"):
        (tmp_path / "empty").mkdir()
        hf_qwen3.read_config(tmp_path / "empty")
    llama = write_folder(tmp_path / "llama", model, {"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    with pytest.raises(ValueError, match="llama is not a Qwen3 model: its config.json says model_type 'llama'"):
        hf_qwen3.read_config(llama)
    no_tok = write_folder(tmp_path / "notok", model, tokenizer=False)
    with pytest.raises(ValueError, match="no tokenizer"):
        hf_qwen3.read_config(no_tok)
    (no_tok / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no .safetensors weights"):
        hf_qwen3.read_config(no_tok)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        hf_qwen3.read_config(broken)


def test_model_folders_are_found_under_roots(tmp_path):
    for rel in ("a", "org/b", "org/deep/er/c", ".hidden/d"):
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "config.json").write_text("{}")
    (tmp_path / "plain").mkdir()
    assert hf_qwen3.find_model_folders([tmp_path, tmp_path / "missing"]) == ["a", "org/b"]
