"""Tiny quantized Z-Image files in the formats users load, each with its dequantized float32 reference.

From the tiny float32 DiT the harness writes: ComfyUI's scaled-fp8 checkpoint (``scaled_fp8`` marker +
``<layer>.scale_weight``, what comfy.utils.convert_old_quants reads), a mixed-precision checkpoint
(``<layer>.comfy_quant`` JSON + ``<layer>.weight_scale``, fp8 main layers, float32 elsewhere), GGUF
Q8_0 / Q4_K files written with the ``gguf`` package (arch ``lumina2``, as ComfyUI-GGUF's convert.py
writes them), and for UNETLoader's fp8 weight dtypes, whose file is the float32 one, the reference with
every tensor rounded through that dtype. References are computed here, not by ComfyUI.
"""

from __future__ import annotations

import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

QUANTIZED_LINEARS = ("attention.qkv.weight", "attention.out.weight", "feed_forward.w1.weight",
                     "feed_forward.w2.weight", "feed_forward.w3.weight")
FP8_MAX = 448.0
GGUF_CONFIG_FIELD = "zimage_lab.unet_config"


def _read(path):
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    return load_file(str(path)), meta


def _fp8_scaled(w):
    scale = (w.abs().max() / FP8_MAX).float().clamp(min=1e-12)
    q = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale, q.float() * scale


def _in_blocks(key, groups):
    return key.split(".")[0] in groups and key.endswith(QUANTIZED_LINEARS)


def write_scaled_fp8(src, dst, ref):
    """Old ComfyUI scaled fp8: every block linear in fp8 with a per-tensor scale_weight."""
    sd, meta = _read(src)
    out, reference = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}, {}
    for key, w in sd.items():
        if _in_blocks(key, ("layers", "context_refiner", "noise_refiner")):
            q, scale, deq = _fp8_scaled(w)
            out[key], out[key[:-len("weight")] + "scale_weight"], reference[key] = q, scale, deq
        else:
            out[key] = reference[key] = w
    save_file(out, str(dst), metadata=meta)
    save_file(reference, str(ref), metadata=meta)


def write_mixed(src, dst, ref, quantized=lambda key: _in_blocks(key, ("layers",))):
    """Mixed precision (comfy_quant): the weights `quantized` picks (default: the 30 main layers' linears) in fp8
    with per-tensor scales, the rest (the DiT's refiners) float32."""
    sd, meta = _read(src)
    out, reference = {}, {}
    conf = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8)
    for key, w in sd.items():
        if quantized(key):
            q, scale, deq = _fp8_scaled(w)
            layer = key[:-len(".weight")]
            out[key], out[layer + ".weight_scale"], out[layer + ".comfy_quant"] = q, scale, conf.clone()
            reference[key] = deq
        else:
            out[key] = reference[key] = w
    save_file(out, str(dst), metadata=meta)
    save_file(reference, str(ref), metadata=meta)


def write_fp8_reference(src, ref, dtype):
    """What UNETLoader's fp8 weight_dtype stores, back in float32: every tensor rounded through dtype."""
    sd, meta = _read(src)
    save_file({k: v.to(dtype).float() for k, v in sd.items()}, str(ref), metadata=meta)


def random_q4_k(shape, seed: int):
    """Valid Q4_K super-blocks with random contents (the gguf package dequantizes Q4_K but cannot quantize
    to it): per 256 values f16 d and dmin, 12 bytes of 6-bit sub-block scales and mins, 128 bytes of nibbles."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n_blocks = int(np.prod(shape)) // 256
    d = np.full((n_blocks, 1), 2e-4, dtype=np.float16).view(np.uint8)
    dmin = np.full((n_blocks, 1), 1e-4, dtype=np.float16).view(np.uint8)
    scales = rng.integers(0, 256, (n_blocks, 12), dtype=np.uint8)
    qs = rng.integers(0, 256, (n_blocks, 128), dtype=np.uint8)
    return np.concatenate([d, dmin, scales, qs], axis=1).reshape(*shape[:-1], shape[-1] // 256 * 144)


def _gguf_dequant(blocks, qtype, d=None, dmin=None, nibbles=None):
    """gguf.quants.dequantize (float32) of Q4_K super-blocks, with d / dmin / all nibbles optionally replaced."""
    import gguf
    import numpy as np

    b = np.array(blocks, dtype=np.uint8).reshape(-1, 144).copy()
    if d is not None:
        b[:, 0:2] = np.full((len(b), 1), d, dtype=np.float16).view(np.uint8)
    if dmin is not None:
        b[:, 2:4] = np.full((len(b), 1), dmin, dtype=np.float16).view(np.uint8)
    if nibbles is not None:
        b[:, 16:] = nibbles
    return np.asarray(gguf.quants.dequantize(b, qtype), dtype=np.float64).reshape(-1)


def comfy_gguf_default_reference(packed, qtype_name: str):
    """What ComfyUI-GGUF's default dequantization (dequant_dtype None) gives, from the gguf package's decoder.

    That default computes in float16: the block scale ``d`` is float16 and ``.to(None)`` keeps it, so every
    product is rounded to float16 (dequant.py ``dequantize_blocks_Q8_0`` / ``_Q4_K``). Q8_0: ``f16(d * q)``,
    i.e. the exact float32 value rounded to float16. Q4_K: ``f16(f16(d*sc) * q - f16(dmin*m))``; the parts
    are read with gguf.quants.dequantize on altered blocks (dmin = 0 and all nibbles 1 gives d*sc; d = 0 gives
    -dmin*m; d = 1, dmin = 0 gives sc*q), so nothing of ComfyUI-GGUF's code is used here."""
    import gguf
    import numpy as np

    qtype = getattr(gguf.GGMLQuantizationType, qtype_name)
    exact = np.asarray(gguf.quants.dequantize(packed, qtype), dtype=np.float64)
    if qtype_name == "Q8_0":
        return exact.astype(np.float16).astype(np.float32)
    if qtype_name != "Q4_K":
        raise ValueError(f"no float16 reference for {qtype_name}")
    d_sc = _gguf_dequant(packed, qtype, dmin=0.0, nibbles=0x11).astype(np.float16).astype(np.float64)
    sc = _gguf_dequant(packed, qtype, d=1.0, dmin=0.0, nibbles=0x11)
    sc_q = _gguf_dequant(packed, qtype, d=1.0, dmin=0.0)
    q = np.divide(sc_q, sc, out=np.zeros_like(sc_q), where=sc != 0)
    dm = (-_gguf_dequant(packed, qtype, d=0.0)).astype(np.float16).astype(np.float64)
    c = (d_sc * q).astype(np.float16).astype(np.float64)
    return (c - dm).astype(np.float16).astype(np.float32).reshape(exact.shape)


def write_gguf(src, dst, ref, qtype_name, exact_ref=None):
    """A GGUF file (arch lumina2) with the block linears in qtype, other tensors F32; the reference of
    ComfyUI-GGUF's default (float16) dequantization in ref, gguf.quants.dequantize's float32 one in exact_ref."""
    import gguf
    import numpy as np

    qtype = getattr(gguf.GGMLQuantizationType, qtype_name)
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    sd, meta = _read(src)
    writer = gguf.GGUFWriter(path=None, arch="lumina2")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string(GGUF_CONFIG_FIELD, meta["zimage_lab_unet_config"])
    reference, exact = {}, {}
    for key, w in sd.items():
        data = w.float().numpy()
        if _in_blocks(key, ("layers", "context_refiner", "noise_refiner")) and data.shape[-1] % block == 0:
            packed = (random_q4_k(data.shape, len(reference)) if qtype_name == "Q4_K"
                      else gguf.quants.quantize(data, qtype))
            writer.add_tensor(key, packed, raw_dtype=qtype)
            exact[key] = torch.from_numpy(np.array(gguf.quants.dequantize(packed, qtype), dtype=np.float32)).reshape(w.shape)
            reference[key] = torch.from_numpy(comfy_gguf_default_reference(packed, qtype_name)).reshape(w.shape)
        else:
            writer.add_tensor(key, data)
            reference[key] = exact[key] = w.float()
    writer.write_header_to_file(path=str(dst))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    save_file(reference, str(ref), metadata=meta)
    if exact_ref is not None:
        save_file(exact, str(exact_ref), metadata=meta)


def write_all(models_dir, tiny_name: str, gguf_ok: bool) -> dict:
    """{kind: (loader node dict, reference file name)} after writing the files under models_dir."""
    folder = models_dir / "diffusion_models"
    src = folder / tiny_name
    kinds = {}

    def unet(name, dtype="default"):
        return {"class_type": "ZImageLabTestTinyQuantUNETLoader", "inputs": {"unet_name": name, "weight_dtype": dtype}}

    for kind, dtype in (("fp8_e4m3fn", torch.float8_e4m3fn), ("fp8_e4m3fn_fast", torch.float8_e4m3fn),
                        ("fp8_e5m2", torch.float8_e5m2)):
        ref = f"q_{kind}_ref.safetensors"
        write_fp8_reference(src, folder / ref, dtype)
        kinds[kind] = (unet(tiny_name, kind), ref)
    write_scaled_fp8(src, folder / "q_scaled_fp8.safetensors", folder / "q_scaled_fp8_ref.safetensors")
    kinds["scaled_fp8"] = (unet("q_scaled_fp8.safetensors"), "q_scaled_fp8_ref.safetensors")
    write_mixed(src, folder / "q_mixed.safetensors", folder / "q_mixed_ref.safetensors")
    kinds["mixed_precision"] = (unet("q_mixed.safetensors"), "q_mixed_ref.safetensors")
    if gguf_ok:
        for qtype in ("Q8_0", "Q4_K"):
            name = f"q_{qtype}.gguf"
            write_gguf(src, folder / name, folder / f"q_{qtype}_ref.safetensors", qtype)
            kinds[f"gguf_{qtype}"] = ({"class_type": "ZImageLabTestTinyGGUFLoader", "inputs": {"unet_name": name}},
                                      f"q_{qtype}_ref.safetensors")
    return kinds
