"""The cases of the bad-input sweep (tests/integration/test_bad_inputs.py): bad values per input type, the upstream
nodes every prompt shares, and one API prompt per (node, input, value)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

LONG = "word " * 4000  # 20,000 characters
CONTROL = "a\x00b\x01c\x07d\x1b[31me\x7f\u202e\ufeff"
STRING_VALUES = {"empty": "", "whitespace": " \t\n  ", "20000 chars": LONG, "control chars": CONTROL,
                 "braces and path": "{} {0} {x} {{ ../../../../etc/passwd \U0001F98A"}
FLOAT_VALUES = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity", "text": "abc"}
INT_VALUES = {"text": "abc", "float text": "1.5", "huge": 2**70}
WORK_INTS = {"steps", "batch_size", "rank", "repeats", "window", "token_budget", "every", "overlap", "end_step",
             "start_step", "trained_length"}
"""Integers whose maximum is valid but means long work (not a bad value); only min and out-of-range there."""
CHEAP = {  # valid settings that keep each node to a blink on the tiny models
    "steps": 1, "batch_size": 1, "seeds": "1, 2", "prompts": "a lighthouse", "preserve_prompts": "a cat",
    "prompt": "a red fox", "text": "a red fox in the snow", "rank": 2, "window": 16, "overlap": 4,
    "prompts_a": "an oil painting of a harbour", "prompts_b": "a photo of a harbour",
}
NODE_CHEAP = {"ZImageLabRefinerLoRATrain": {"steps": 1}, "ZImageLabChunkedEncode": {"window": 16, "overlap": 4}}

UPSTREAM = {
    "u_model": {"class_type": "ZImageLabTestTinyUNETLoader", "inputs": {"unet_name": "tiny_zimage.safetensors"}},
    "u_clip": {"class_type": "ZImageLabTestTinyCLIPLoader", "inputs": {"clip_name": "tiny_qwen3.safetensors"}},
    "u_vae": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny_flux_taesd.safetensors"}},
    "u_cond": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["u_clip", 0], "text": "a red fox"}},
    "u_latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
    "u_small": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 1}},
    "u_image": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 2, "color": 4243520}},
    "u_vector": {"class_type": "ZImageLabSteeringVectorBuild",
                 "inputs": {"clip": ["u_clip", 0], "prompts_a": "an oil painting", "prompts_b": "a photo", "layer": -2,
                            "template": "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
                            "normalize": False, "space": "embedding"}},
    "u_latent2": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 2}},
    "u_hf_clip": {"class_type": "ZImageLabHFQwen3Loader", "inputs": {"model_folder": "tiny_qwen3_small_hf", "dtype": "auto"}},
}
UPSTREAM["u_refined"] = {"class_type": "ZImageLabSteeringVectorBuild",
                         "inputs": {**UPSTREAM["u_vector"]["inputs"], "space": "refined", "model": ["u_model", 0]}}
SOURCE = {"MODEL": "u_model", "CLIP": "u_clip", "VAE": "u_vae", "CONDITIONING": "u_cond", "LATENT": "u_latent",
          "IMAGE": "u_image", "ZIMAGE_STEERING_VECTOR": "u_vector"}
NODE_SOURCE = {  # inputs whose valid value is another upstream object than SOURCE's (what the node needs)
    "ZImageLabRefinedSteering": {"vector": "u_refined"},           # a refined-space vector
    "ZImageLabProjectorLoader": {"clip": "u_hf_clip"},             # a transformers Qwen3 (64 wide) for the projector
    "ZImageLabSeedDiversity": {"latents": "u_latent2", "baseline_latents": "u_latent2"},  # one latent per image
}
LORA_FILE = "badinputs_refiner.safetensors"
"""A tiny context-refiner LoRA the sweep writes into its base folder, so the LoRA loader's valid baseline runs."""
WIRED = {  # a valid type with the wrong content: (extra nodes, source)
    "LATENT": {
        "SD 4-channel latent": {"w": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}}},
        "batch of 3": {"w": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 3}}},
        "16 pixels": {"w": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 1}}},
    },
    "IMAGE": {"1 pixel": {"w": {"class_type": "EmptyImage", "inputs": {"width": 1, "height": 1, "batch_size": 1, "color": 0}}}},
    "CONDITIONING": {
        "zeroed": {"w": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["u_cond", 0]}}},
        "two entries": {"w": {"class_type": "ConditioningCombine",
                              "inputs": {"conditioning_1": ["u_cond", 0], "conditioning_2": ["u_cond", 0]}}},
    },
    "ZIMAGE_STEERING_VECTOR": {
        "refined space": {"w": {"class_type": "ZImageLabSteeringVectorBuild",
                                "inputs": {**UPSTREAM["u_vector"]["inputs"], "space": "refined", "model": ["u_model", 0]}}},
    },
}


@dataclass
class Case:
    node: str
    input: str
    label: str
    prompt: dict
    outcome: str = "pending"
    detail: str = ""
    seconds: float = 0.0
    guard: dict = field(default_factory=dict)
    ui: dict = field(default_factory=dict)


def spec_of(info: dict, name: str):
    for section in ("required", "optional"):
        if name in info["input"].get(section, {}):
            return info["input"][section][name]
    raise KeyError(name)


def _type(spec) -> str:
    return "COMBO" if isinstance(spec[0], list) or spec[0] == "COMBO" else spec[0]


def options_of(spec) -> list:
    return spec[0] if isinstance(spec[0], list) else spec[1].get("options", [])


def _valid(node: str, name: str, spec):
    kind, extra = _type(spec), (spec[1] if len(spec) > 1 else {})
    if name in NODE_SOURCE.get(node, {}):
        return [NODE_SOURCE[node][name], 0]
    if kind in SOURCE:
        return [SOURCE[kind], 0]
    if name in NODE_CHEAP.get(node, {}):
        return NODE_CHEAP[node][name]
    if name in CHEAP and kind in ("STRING", "INT"):
        value = CHEAP[name]
        return max(value, extra.get("min", value)) if kind == "INT" else value
    if kind == "COMBO":
        options = options_of(spec)
        return extra.get("default", options[0] if options else "")
    return extra.get("default", {"INT": 0, "FLOAT": 0.0, "BOOLEAN": False, "STRING": "a"}.get(kind))


def _bad_values(node: str, name: str, spec, sockets_of: dict) -> dict:
    kind, extra = _type(spec), (spec[1] if len(spec) > 1 else {})
    if kind == "STRING":
        return dict(STRING_VALUES)
    if kind == "FLOAT":
        values = dict(FLOAT_VALUES)
        if "min" in extra:
            values.update({"min": extra["min"], "below min": extra["min"] - 1})
        if "max" in extra:
            values["above max"] = extra["max"] + 1
        return values
    if kind == "INT":
        values = dict(INT_VALUES)
        if "min" in extra:
            values.update({"min": extra["min"], "below min": extra["min"] - 1})
        if "max" in extra:
            values["above max"] = extra["max"] + 1
            if name not in WORK_INTS:
                values["max"] = extra["max"]
        return values
    if kind == "BOOLEAN":
        return {"not the default": not extra.get("default", False)}
    if kind == "COMBO":
        options = options_of(spec)
        values = {"empty": "", "near miss": (str(options[0]).upper() + " ") if options else "x", "number": 3}
        if "default" not in extra:  # a file list: every file (the test models include wrong ones)
            values.update({f"file {o!r}": o for o in options})
        return values
    # a socket: the wrong type, and the right type with the wrong content
    wrong = "u_image" if kind != "IMAGE" else "u_latent"
    values = {"wrong type": ([wrong, 0], {})}
    for label, nodes in WIRED.get(kind, {}).items():
        values[label] = (["w", 0], nodes)
    return values


def _exercise(node: str, info: dict, downstream: bool) -> dict:
    """Nodes that use the node's outputs, so errors deferred to sampling or encoding show up.

    Only for numbers, switches, files and sockets (strings are parsed when the node runs)."""
    extra, results = {}, {}
    for i, out in enumerate(info["output"]):
        if not downstream and i < 6:
            results[f"result_{i}"] = ["t", i]
        elif out == "MODEL":
            extra[f"x{i}"] = {"class_type": "KSampler", "inputs": {
                "model": ["t", i], "seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                "positive": ["u_cond", 0], "negative": ["u_cond", 0], "latent_image": ["u_small", 0], "denoise": 1.0}}
            results[f"result_{i}"] = [f"x{i}", 0]
        elif out == "CLIP":
            extra[f"x{i}"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["t", i], "text": "a red fox"}}
            results[f"result_{i}"] = [f"x{i}", 0]
        elif out == "CONDITIONING":
            extra[f"x{i}"] = {"class_type": "KSampler", "inputs": {
                "model": ["u_model", 0], "seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                "positive": ["t", i], "negative": ["t", i], "latent_image": ["u_small", 0], "denoise": 1.0}}
            results[f"result_{i}"] = [f"x{i}", 0]
        elif i < 6:
            results[f"result_{i}"] = ["t", i]
    return extra, results


def build_prompt(node: str, info: dict, override: dict | None = None, wired: dict | None = None,
                 downstream: bool = True) -> dict:
    inputs = {}
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            if section == "optional" and _type(spec) not in ("STRING", "INT", "FLOAT", "BOOLEAN", "COMBO") \
                    and _type(spec) not in SOURCE:
                continue  # optional sockets of types we cannot make (LORA_MODEL, ZIMAGE_CHAT) stay empty
            inputs[name] = _valid(node, name, spec)
    inputs.update(override or {})
    prompt = copy.deepcopy(UPSTREAM)
    prompt.update(copy.deepcopy(wired or {}))
    prompt["t"] = {"class_type": node, "inputs": inputs}
    extra, results = _exercise(node, info, downstream)
    prompt.update(extra)
    prompt["guard"] = guard_node(results)
    return prompt


def guard_node(results: dict, weights: bool = False) -> dict:
    """The guard, wired to every upstream node (so each is fingerprinted after the node under test ran)."""
    names = sorted(UPSTREAM)
    return {"class_type": "ZImageLabTestInputGuard",
            "inputs": {"names": ",".join(names), "weights": weights,
                       **{f"upstream_{i}": [n, 0] for i, n in enumerate(names)}, **results}}


def make_cases(ours: dict) -> list[Case]:
    cases = []
    for node, info in sorted(ours.items()):
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                for label, value in _bad_values(node, name, spec, SOURCE).items():
                    wired = None
                    if isinstance(value, tuple):
                        value, wired = value
                    downstream = _type(spec) != "STRING"
                    cases.append(Case(node, name, label, build_prompt(node, info, {name: value}, wired, downstream)))
    return cases


def reference_case() -> Case:
    """Stock CLIPTextEncode of the 20,000-character text: the yardstick for long texts."""
    prompt = copy.deepcopy(UPSTREAM)
    prompt["t"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["u_clip", 0], "text": LONG}}
    prompt["guard"] = guard_node({"result_0": ["t", 0]})
    return Case("CLIPTextEncode (stock reference)", "text", "20000 chars", prompt)


def write_lora(folder) -> None:
    """A rank-2 LoRA on the tiny DiT's first context-refiner block (kohya names, ComfyUI-native fused qkv)."""
    import torch
    from safetensors.torch import save_file

    gen, width = torch.Generator().manual_seed(0), 256
    key = "lora_unet_context_refiner_0_attention_qkv"
    save_file({f"{key}.lora_down.weight": 0.1 * torch.randn(2, width, generator=gen),
               f"{key}.lora_up.weight": 0.1 * torch.randn(3 * width, 2, generator=gen),
               f"{key}.alpha": torch.tensor(2.0)}, str(folder / LORA_FILE))
