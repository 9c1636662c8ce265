"""The field benchmark's graphs: the shipped API workflows, the stock graph beside them, fp8 weight variants.

A helper of bench/e2e.py.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

VARIANTS = ("stock", "lab", "accelerated", "accelerated_fp8")
FP8_VARIANTS = ("stock_fp8", "lab_fp8", "stock_scaled_fp8", "lab_scaled_fp8")
"""Issue 15's weight kinds, timed where --fp8-configs says (default: under the memory cap): UNETLoader's
``weight_dtype`` fp8_e4m3fn on the bf16 file, and ComfyUI's scaled-fp8 checkpoint (bench/checkpoints.py)."""
SCALED_FP8_FILE = "z_image_turbo_fp8_scaled.safetensors"
TINY_SCALED_FP8_FILE = "q_scaled_fp8.safetensors"
DEPENDS = {"zimage_refiner_lora.json": "zimage_refiner_lora_train.json"}
"""Workflows that read a file another workflow writes run after it."""


def load_api(name: str) -> dict:
    return json.loads((REPO / "workflows" / "api" / name).read_text())


def stock_graph(lab: dict) -> dict:
    """zimage_turbo_lab with our sampler replaced by ComfyUI's official Turbo path (AuraFlow shift -> KSampler)."""
    api = copy.deepcopy(lab)
    sid, sampler = next((k, v) for k, v in api.items() if v["class_type"] == "ZImageLabSampler")
    i = sampler["inputs"]
    api["100"] = {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": i["model"], "shift": i["shift"]}}
    api["101"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": i["positive"]}}
    api["102"] = {"class_type": "KSampler", "inputs": {
        "model": ["100", 0], "seed": i["seed"], "steps": i["steps"], "cfg": i["cfg"], "sampler_name": i["sampler_name"],
        "scheduler": i["scheduler"], "positive": i["positive"], "negative": ["101", 0],
        "latent_image": i["latent_image"], "denoise": i["denoise"]}}
    del api[sid]
    for node in api.values():
        for key, value in node["inputs"].items():
            if value == [sid, 0]:
                node["inputs"][key] = ["102", 0]
    return api


def fill_defaults(api: dict, object_info: dict) -> dict:
    """Required inputs a graph leaves out, set to the node's default (a swapped-in node may have more inputs)."""
    for node in api.values():
        required = object_info.get(node["class_type"], {}).get("input", {}).get("required", {})
        for name, spec in required.items():
            if name not in node["inputs"] and len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]:
                node["inputs"][name] = spec[1]["default"]
    return api


def with_weights(api: dict, weight_dtype: str = "default", unet_name: str | None = None) -> dict:
    """The graph with its UNETLoader set to another weight dtype or checkpoint file."""
    api = copy.deepcopy(api)
    for node in api.values():
        if node["class_type"] == "UNETLoader":
            node["inputs"]["weight_dtype"] = weight_dtype
            if unet_name:
                node["inputs"]["unet_name"] = unet_name
    return api


def variants(save_node: str | None, object_info: dict | None = None) -> dict:
    """The four timed graphs; the accelerated ones save through save_node when the server has it."""
    lab = load_api("zimage_turbo_lab.json")
    acc = load_api("zimage_turbo_accelerated.json")
    fp8 = copy.deepcopy(acc)
    for node in fp8.values():
        if node["class_type"] == "ZImageLabAccelerate":
            node["inputs"]["fp8_matmul"] = True
    out = {"stock": stock_graph(lab), "lab": lab, "accelerated": acc, "accelerated_fp8": fp8}
    out["stock_fp8"], out["lab_fp8"] = (with_weights(out[k], "fp8_e4m3fn") for k in ("stock", "lab"))
    out["stock_scaled_fp8"], out["lab_scaled_fp8"] = (with_weights(out[k], unet_name=SCALED_FP8_FILE)
                                                      for k in ("stock", "lab"))
    if save_node:
        for name in ("accelerated", "accelerated_fp8"):
            for node in out[name].values():
                if node["class_type"] == "SaveImage":
                    node["class_type"] = save_node
            fill_defaults(out[name], object_info or {})
    for name, api in out.items():
        for node in api.values():
            if "filename_prefix" in node["inputs"]:
                node["inputs"]["filename_prefix"] = f"e2e/{name}"
    return out


def set_seed(api: dict, seed: int) -> dict:
    api = copy.deepcopy(api)
    for node in api.values():
        for key in ("seed", "noise_seed"):
            if key in node["inputs"] and not isinstance(node["inputs"][key], list):
                node["inputs"][key] = seed
    return api


def tiny_weights(api: dict) -> dict:
    """fp8 UNETLoaders as the tests' quant loader on the tiny file (the tiny loader knows only bf16/float32)."""
    for node in api.values():
        inputs = node["inputs"]
        if node["class_type"] == "UNETLoader" and (inputs.get("weight_dtype", "default") != "default"
                                                   or inputs.get("unet_name") == SCALED_FP8_FILE):
            import harness

            scaled = inputs.get("unet_name") == SCALED_FP8_FILE
            node["class_type"] = "ZImageLabTestTinyQuantUNETLoader"
            inputs["unet_name"] = TINY_SCALED_FP8_FILE if scaled else harness.TINY_FILES["unet_name"]
    return api


def shrink(api: dict, tiny: bool) -> dict:
    """The tests' tiny loaders and 64 px latents (tiny mode), else the graph as shipped."""
    if not tiny:
        return api
    import harness

    api = harness.shrink_images(harness.use_tiny_models(tiny_weights(copy.deepcopy(api))), 64)
    for node in api.values():  # the tiny CPU run checks the plumbing, not the images: few steps
        inputs = node["inputs"]
        if isinstance(inputs.get("steps"), int):
            inputs["steps"] = min(inputs["steps"], 20 if node["class_type"] == "ZImageLabRefinerLoRATrain" else 2)
    return api


def workflow_order(names: list) -> list:
    """In the order given (--workflows all: alphabetical), each workflow after the one whose file it reads."""
    order = list(names)
    for after, before in DEPENDS.items():
        if after in order and before in order:
            order.remove(after)
            order.insert(order.index(before) + 1, after)
    return order

