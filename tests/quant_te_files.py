"""Tiny quantized Qwen3 text encoders in the formats users load, each with its float32 reference.

From the tiny float32 Qwen3 the harness writes: an fp8 file (every tensor float8_e4m3fn, as a plain fp8
conversion stores it: CLIPLoader builds the model in the norm's dtype, comfy/text_encoders/hunyuan_video.py
``llama_detect``), a mixed-precision file (``.comfy_quant`` + ``.weight_scale`` on the layers' linears, what
Comfy-Org's ``*_fp8_mixed`` encoders hold) and a GGUF Q8_0 file with llama.cpp tensor names (arch ``qwen3``,
what ComfyUI-GGUF's ``gguf_clip_loader`` maps back with ``LLAMA_SD_MAP``). References are computed here."""

from __future__ import annotations

import re

import torch
from safetensors.torch import save_file

import quant_files

GGUF_CONFIG_FIELD = "zimage_lab.qwen3_config"
LLAMA_CPP_NAMES = [  # ComfyUI name piece -> llama.cpp name piece (ComfyUI-GGUF's LLAMA_SD_MAP, reversed)
    ("model.layers.", "blk."), ("self_attn.q_norm.", "attn_q_norm."), ("self_attn.k_norm.", "attn_k_norm."),
    ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"),
    ("mlp.gate_proj", "ffn_gate"), ("post_attention_layernorm", "ffn_norm"), ("input_layernorm", "attn_norm"),
    ("model.embed_tokens", "token_embd"), ("model.norm", "output_norm")]
LINEAR = re.compile(r"^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(up|down|gate)_proj)\.weight$")


def llama_cpp_name(key: str) -> str:
    for ours, theirs in LLAMA_CPP_NAMES:
        key = key.replace(ours, theirs)
    return key


def write_fp8(src, dst, ref):
    sd, meta = quant_files._read(src)
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in sd.items()}, str(dst), metadata=meta)
    save_file({k: v.to(torch.float8_e4m3fn).float() for k, v in sd.items()}, str(ref), metadata=meta)


def write_mixed(src, dst, ref):
    """Mixed precision (comfy_quant): every Qwen3 linear in fp8 with per-tensor scales."""
    quant_files.write_mixed(src, dst, ref, quantized=lambda key: bool(LINEAR.match(key)))


def write_gguf(src, dst, ref):
    """Q8_0 linears, F32 elsewhere; reference: ComfyUI-GGUF's default float16 dequantization, and the token
    embedding rounded to float16 (gguf_clip_loader dequantizes a >= 64k-row embedding to float16)."""
    import gguf
    import numpy as np

    sd, meta = quant_files._read(src)
    writer = gguf.GGUFWriter(path=None, arch="qwen3")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string(GGUF_CONFIG_FIELD, meta["zimage_lab_qwen3_config"])
    reference = {}
    for key, w in sd.items():
        data = w.float().numpy()
        if LINEAR.match(key) and data.shape[-1] % 32 == 0:
            packed = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(llama_cpp_name(key), packed, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            reference[key] = torch.from_numpy(quant_files.comfy_gguf_default_reference(packed, "Q8_0")).reshape(w.shape)
        else:
            writer.add_tensor(llama_cpp_name(key), data)
            big_embedding = key == "model.embed_tokens.weight" and w.shape[0] >= 64 * 1024
            reference[key] = w.half().float() if big_embedding else w.float()
    writer.write_header_to_file(path=str(dst))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    save_file(reference, str(ref), metadata=meta)
    return np


def write_all(models_dir, clip_name: str, gguf_ok: bool) -> dict:
    """{kind: (loader node dict, reference file name in text_encoders)} after writing the files."""
    folder = models_dir / "text_encoders"
    src = folder / clip_name
    kinds = {}

    def loader(name):
        return {"class_type": "ZImageLabTestTinyQuantCLIPLoader", "inputs": {"clip_name": name}}

    write_fp8(src, folder / "qte_fp8.safetensors", folder / "qte_fp8_ref.safetensors")
    kinds["fp8_e4m3fn"] = (loader("qte_fp8.safetensors"), "qte_fp8_ref.safetensors")
    write_mixed(src, folder / "qte_mixed.safetensors", folder / "qte_mixed_ref.safetensors")
    kinds["mixed_precision"] = (loader("qte_mixed.safetensors"), "qte_mixed_ref.safetensors")
    if gguf_ok:
        write_gguf(src, folder / "qte_Q8_0.gguf", folder / "qte_Q8_0_ref.safetensors")
        kinds["gguf_Q8_0"] = (loader("qte_Q8_0.gguf"), "qte_Q8_0_ref.safetensors")
    return kinds
