"""Qwen3 text encoders through transformers: Hugging Face folders and ComfyUI single files.

A Hugging Face Qwen3 folder (config.json with ``model_type: qwen3``, safetensors weights, tokenizer
files) loads as a ``transformers`` ``Qwen3Model``; so does ComfyUI's single-file Qwen3 (keys
``model.layers.N...``, as in qwen_3_4b.safetensors), its config read off the tensor shapes. Both
give every hidden state of one forward pass, in the order core.encoder expects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

QWEN3_MODEL_TYPES = ("qwen3",)
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
QWEN3_DEFAULTS = {"rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 40960,
                  "hidden_act": "silu", "attention_bias": False, "tie_word_embeddings": True}
"""What every Qwen3 checkpoint shares and a weights file does not record."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def find_model_folders(roots, max_depth: int = 3) -> list[str]:
    """Folders (relative to a root, '/'-separated) that hold a config.json, up to max_depth deep."""
    found = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            rel = Path(dirpath).relative_to(root)
            if len(rel.parts) >= max_depth:
                dirnames[:] = []
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            if rel.parts and "config.json" in filenames:
                found.add(rel.as_posix())
    return sorted(found)


def read_config(folder) -> dict:
    """The folder's config.json after checking it is a complete Qwen3 model, else a ValueError saying why."""
    folder = Path(folder)
    name = folder.name
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{name} is not a Hugging Face model folder: it has no config.json")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}/config.json is not valid JSON ({e})") from None
    model_type = config.get("model_type")
    if model_type not in QWEN3_MODEL_TYPES:
        raise ValueError(f"{name} is not a Qwen3 model: its config.json says model_type {model_type!r} "
                         f"(architectures {config.get('architectures')}); choose a folder with model_type 'qwen3', "
                         "e.g. Qwen/Qwen3-4B or Qwen/Qwen3-1.7B")
    if not any(folder.glob("*.safetensors")):
        raise ValueError(f"{name} has no .safetensors weights: download the model's *.safetensors files into it")
    if not any(all((folder / f).is_file() for f in files) for files in TOKENIZER_FILES):
        raise ValueError(f"{name} has no tokenizer: it needs tokenizer.json (or vocab.json + merges.txt) beside config.json")
    return config


def config_from_state_dict(state_dict: dict, prefix: str = "model.") -> dict:
    """A transformers Qwen3Config dict read off a Qwen3 state dict's shapes (head width from q_norm)."""
    try:
        embed = state_dict[f"{prefix}embed_tokens.weight"]
        head_dim = state_dict[f"{prefix}layers.0.self_attn.q_norm.weight"].shape[0]
        q = state_dict[f"{prefix}layers.0.self_attn.q_proj.weight"]
        k = state_dict[f"{prefix}layers.0.self_attn.k_proj.weight"]
        gate = state_dict[f"{prefix}layers.0.mlp.gate_proj.weight"]
    except KeyError as e:
        raise ValueError(f"not a Qwen3 state dict: it lacks {e.args[0]}") from None
    layers = {int(k[len(f"{prefix}layers."):].split(".")[0]) for k in state_dict if k.startswith(f"{prefix}layers.")}
    return {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": embed.shape[0],
            "hidden_size": embed.shape[1], "intermediate_size": gate.shape[0], "num_hidden_layers": max(layers) + 1,
            "num_attention_heads": q.shape[0] // head_dim, "num_key_value_heads": k.shape[0] // head_dim,
            "head_dim": head_dim, **QWEN3_DEFAULTS}


def qwen3_config(config: dict):
    """transformers Qwen3Config from a config dict."""
    from transformers import Qwen3Config

    return Qwen3Config(**{k: v for k, v in config.items() if k not in ("model_type", "architectures", "transformers_version")})


def _dtype_kwargs(dtype: torch.dtype) -> dict:
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}


def load_folder(folder, dtype: torch.dtype = torch.float32):
    """The Qwen3Model of a checked Hugging Face folder, in eval mode, on the CPU."""
    from transformers import Qwen3Model

    read_config(folder)
    model = Qwen3Model.from_pretrained(str(folder), **_dtype_kwargs(dtype))
    return model.eval().requires_grad_(False)


def load_tokenizer(folder):
    """The folder's tokenizer (transformers AutoTokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def load_single_file(path, dtype: torch.dtype = torch.float32):
    """A Qwen3Model for a ComfyUI-style single safetensors file (e.g. qwen_3_4b.safetensors)."""
    from safetensors.torch import load_file
    from transformers import Qwen3Model

    state_dict = load_file(str(path))
    config = qwen3_config(config_from_state_dict(state_dict))
    with torch.device("meta"):
        model = Qwen3Model(config)
    weights = {k[len("model."):]: v.to(dtype) for k, v in state_dict.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    if missing:
        raise ValueError(f"{Path(path).name} is missing Qwen3 weights: {sorted(missing)[:5]}")
    if unexpected:
        raise ValueError(f"{Path(path).name} has tensors a plain Qwen3 does not ({sorted(unexpected)[:3]}; a quantized "
                         "file?): use the bf16/fp16 file or the Hugging Face folder")
    model.rotary_emb = type(model.rotary_emb)(config=config)  # buffers are not in the file: rebuild off meta
    return model.eval().requires_grad_(False)


def num_layers(model) -> int:
    return int(model.config.num_hidden_layers)


def hidden_size(model) -> int:
    return int(model.config.hidden_size)


@torch.no_grad()
def hidden_states(model, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Every hidden state of one forward pass, float32 [B, n+1, L, W]: embeddings, each layer, the last normed."""
    out = model(input_ids=input_ids, inputs_embeds=inputs_embeds, output_hidden_states=True, use_cache=False)
    return torch.stack([h.float() for h in out.hidden_states], dim=1)
