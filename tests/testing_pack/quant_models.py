"""Test-only loaders for tiny quantized Z-Image files, through ComfyUI's and ComfyUI-GGUF's real loaders.

The stock loaders only recognise Z-Image at width 3840 (comfy/model_detection.py), so while a tiny file
loads, ``comfy.model_detection.model_config_from_unet`` answers ``supported_models.ZImage`` with the
tiny config stored in the file (and the per-layer quantization it detects, as the original does).
Everything else is the real code: ``nodes.UNETLoader.load_unet`` (weight_dtype -> model_options),
``comfy.sd.load_diffusion_model_state_dict`` (fp8 dtypes, fp8_optimizations, scaled fp8 conversion,
mixed-precision ops) and ComfyUI-GGUF's ``UnetLoaderGGUF.load_unet`` (GGMLOps, GGUFModelPatcher).

ComfyUI-GGUF is never part of this repository: it is found at $ZLAB_COMFYUI_GGUF, in ComfyUI's
custom_nodes, or at ~/comfy/custom_nodes-extra/ComfyUI-GGUF (see gguf_pack_path()).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
from pathlib import Path

GGUF_CONFIG_FIELD = "zimage_lab.unet_config"
WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]


def gguf_pack_path(comfyui: str | None = None) -> Path | None:
    """Folder of city96/ComfyUI-GGUF, or None: $ZLAB_COMFYUI_GGUF, <ComfyUI>/custom_nodes/ComfyUI-GGUF,
    ~/comfy/custom_nodes-extra/ComfyUI-GGUF."""
    candidates = [os.environ.get("ZLAB_COMFYUI_GGUF")]
    if comfyui:
        candidates.append(os.path.join(comfyui, "custom_nodes", "ComfyUI-GGUF"))
    candidates.append(os.path.expanduser("~/comfy/custom_nodes-extra/ComfyUI-GGUF"))
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "loader.py")) and os.path.isfile(os.path.join(c, "nodes.py")):
            return Path(c)
    return None


def gguf_missing_reason(comfyui: str | None = None) -> str | None:
    """Why GGUF tests cannot run here, or None."""
    if gguf_pack_path(comfyui) is None:
        return ("ComfyUI-GGUF not found: set ZLAB_COMFYUI_GGUF to a clone of city96/ComfyUI-GGUF "
                "(or put it in ComfyUI's custom_nodes or ~/comfy/custom_nodes-extra)")
    if importlib.util.find_spec("gguf") is None:
        return "the gguf package is not installed (pip install gguf)"
    return None


def import_gguf_pack():
    """ComfyUI-GGUF's nodes module, imported as a package from gguf_pack_path()."""
    name = "zimage_lab_comfyui_gguf"
    if name + ".nodes" in sys.modules:
        return sys.modules[name + ".nodes"]
    import folder_paths

    path = gguf_pack_path(os.path.dirname(os.path.dirname(os.path.abspath(folder_paths.__file__))))
    reason = gguf_missing_reason()
    if path is None or reason:
        raise RuntimeError(reason)
    spec = importlib.util.spec_from_file_location(name, path / "__init__.py", submodule_search_locations=[str(path)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return sys.modules[name + ".nodes"]


@contextlib.contextmanager
def tiny_detection(unet_config: dict):
    """While loading: model detection answers ZImage(unet_config) plus the layer quantization it finds."""
    import comfy.model_detection
    import comfy.supported_models
    import comfy.utils

    original = comfy.model_detection.model_config_from_unet

    def detect(state_dict, unet_key_prefix, use_base_if_no_match=False, metadata=None):
        model_config = comfy.supported_models.ZImage(dict(unet_config))
        quant = comfy.utils.detect_layer_quantization(state_dict, unet_key_prefix)
        if quant:
            model_config.quant_config = quant
        return model_config

    comfy.model_detection.model_config_from_unet = detect
    try:
        yield
    finally:
        comfy.model_detection.model_config_from_unet = original


def safetensors_config(path: str) -> dict:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta["zimage_lab_unet_config"])


def gguf_config(path: str) -> dict:
    import gguf

    field = gguf.GGUFReader(path).get_field(GGUF_CONFIG_FIELD)
    return json.loads(str(field.parts[field.data[-1]], encoding="utf-8"))


def load_unet(unet_name: str, weight_dtype: str):
    """nodes.UNETLoader().load_unet on a tiny file; a reload (cached_patcher_init) detects it again."""
    import folder_paths
    import nodes

    config = safetensors_config(folder_paths.get_full_path_or_raise("diffusion_models", unet_name))
    with tiny_detection(config):
        model = nodes.UNETLoader().load_unet(unet_name, weight_dtype)[0]
    model.cached_patcher_init = (lambda *a: load_unet(unet_name, weight_dtype), ())
    return model


def load_gguf(unet_name: str):
    """ComfyUI-GGUF's UnetLoaderGGUF().load_unet on a tiny GGUF file."""
    import folder_paths

    gguf_nodes = import_gguf_pack()
    config = gguf_config(folder_paths.get_full_path_or_raise("diffusion_models", unet_name))
    with tiny_detection(config):
        return gguf_nodes.UnetLoaderGGUF().load_unet(unet_name)[0]


@contextlib.contextmanager
def tiny_text_encoder(qwen3_config: dict):
    """While loading: the text-encoder detection answers Qwen3-4B and the tiny config reaches the model
    (comfy/sd.py ``detect_te_model`` knows Qwen3 only by its hidden size)."""
    import comfy.sd

    detect, load = comfy.sd.detect_te_model, comfy.sd.load_text_encoder_state_dicts

    def load_tiny(*args, model_options={}, **kwargs):
        return load(*args, model_options={**model_options, "qwen3_4b_model_config": dict(qwen3_config)}, **kwargs)

    comfy.sd.detect_te_model = lambda sd: comfy.sd.TEModel.QWEN3_4B
    comfy.sd.load_text_encoder_state_dicts = load_tiny
    try:
        yield
    finally:
        comfy.sd.detect_te_model, comfy.sd.load_text_encoder_state_dicts = detect, load


def load_clip(clip_name: str):
    """A tiny Qwen3 through the real loaders: comfy.sd.load_clip (CLIPLoader's, fp8 and comfy_quant included)
    or, for .gguf, ComfyUI-GGUF's CLIPLoaderGGUF (gguf_clip_loader, GGMLOps, GGUFModelPatcher)."""
    import comfy.sd
    import folder_paths

    path = folder_paths.get_full_path_or_raise("text_encoders", clip_name)
    if path.endswith(".gguf"):
        import gguf

        field = gguf.GGUFReader(path).get_field("zimage_lab.qwen3_config")
        config = json.loads(str(field.parts[field.data[-1]], encoding="utf-8"))
        loader = import_gguf_pack().CLIPLoaderGGUF()
        with tiny_text_encoder(config):
            return loader.load_patcher([path], comfy.sd.CLIPType.LUMINA2, loader.load_data([path]))
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        config = json.loads(f.metadata()["zimage_lab_qwen3_config"])
    with tiny_text_encoder(config):
        return comfy.sd.load_clip([path], folder_paths.get_folder_paths("embeddings"), comfy.sd.CLIPType.LUMINA2)


def _nodes():
    import folder_paths
    from comfy_api.latest import io

    class TinyQuantUNETLoader(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(
                node_id="ZImageLabTestTinyQuantUNETLoader", display_name="Tiny Z-Image UNETLoader (tests)",
                category="Z-Image Lab/testing",
                description="The stock UNETLoader (weight_dtype included) on a tiny Z-Image file, scaled fp8 too.",
                inputs=[io.Combo.Input("unet_name", options=folder_paths.get_filename_list("diffusion_models")),
                        io.Combo.Input("weight_dtype", options=WEIGHT_DTYPES, default="default")],
                outputs=[io.Model.Output()])

        @classmethod
        def execute(cls, unet_name, weight_dtype) -> io.NodeOutput:
            return io.NodeOutput(load_unet(unet_name, weight_dtype))

    class TinyGGUFLoader(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(
                node_id="ZImageLabTestTinyGGUFLoader", display_name="Tiny Z-Image GGUF Loader (tests)",
                category="Z-Image Lab/testing", description="ComfyUI-GGUF's Unet Loader (GGUF) on a tiny Z-Image file.",
                inputs=[io.String.Input("unet_name", tooltip="A .gguf file name in models/diffusion_models.")],
                outputs=[io.Model.Output()])

        @classmethod
        def execute(cls, unet_name) -> io.NodeOutput:
            return io.NodeOutput(load_gguf(unet_name))

    class SaveFloatWeights(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(
                node_id="ZImageLabTestSaveFloatWeights", display_name="Save Dequantized DiT Weights (tests)",
                category="Z-Image Lab/testing",
                description="Loads the model with its patches and saves every weight dequantized to float32, "
                            "plus the model kind as ui text.",
                inputs=[io.Model.Input("model"), io.String.Input("filename_prefix", default="weights")],
                outputs=[], is_output_node=True)

        @classmethod
        def execute(cls, model, filename_prefix) -> io.NodeOutput:
            import comfy.model_management
            from safetensors.torch import save_file

            quant = _pack_quant()
            comfy.model_management.load_models_gpu([model], force_full_load=True)
            state = quant.float_state_dict(model.model.diffusion_model)
            path = os.path.join(folder_paths.get_output_directory(), filename_prefix + ".safetensors")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            save_file(state, path)
            return io.NodeOutput(ui={"text": [quant.model_kind(model)]})

    class FakeNunchaku(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(
                node_id="ZImageLabTestFakeNunchaku", display_name="Fake nunchaku Z-Image patcher (tests)",
                category="Z-Image Lab/testing",
                description="A clone whose ModelPatcher class looks like ComfyUI-nunchaku's ZImageModelPatcher "
                            "(nunchaku cannot be installed without its CUDA wheels).",
                inputs=[io.Model.Input("model")], outputs=[io.Model.Output()])

        @classmethod
        def execute(cls, model) -> io.NodeOutput:
            clone = model.clone()
            clone.__class__ = type("ZImageModelPatcher", (type(model),), {"__module__": "ComfyUI-nunchaku.model_patcher"})
            return io.NodeOutput(clone)

    class TinyQuantCLIPLoader(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(
                node_id="ZImageLabTestTinyQuantCLIPLoader", display_name="Tiny quantized Qwen3 Loader (tests)",
                category="Z-Image Lab/testing",
                description="CLIPLoader (lumina2) or ComfyUI-GGUF's CLIPLoader (GGUF) on a tiny Qwen3 file.",
                inputs=[io.String.Input("clip_name", tooltip="A file name in models/text_encoders.")],
                outputs=[io.Clip.Output(), io.String.Output("kinds")])

        @classmethod
        def execute(cls, clip_name) -> io.NodeOutput:
            from collections import Counter

            clip, quant = load_clip(clip_name), _pack_quant()
            kinds = Counter(quant.tensor_kind(m._parameters["weight"]) for m in clip.cond_stage_model.modules()
                            if m._parameters.get("weight") is not None)
            return io.NodeOutput(clip, ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))

    return [TinyQuantUNETLoader, TinyGGUFLoader, SaveFloatWeights, FakeNunchaku, TinyQuantCLIPLoader]


def _pack_quant():
    """The pack's nodes._internals.quant, whatever name ComfyUI imported the pack under."""
    import importlib

    for name in list(sys.modules):
        if name.endswith("nodes._internals.lora"):
            return importlib.import_module(name[:-len("lora")] + "quant")
    raise RuntimeError("Z-Image Lab is not loaded in this server")


NODES = _nodes() if "folder_paths" in sys.modules else []
