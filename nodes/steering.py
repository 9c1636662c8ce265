"""Steering vectors: build from prompt lists, save / load / list, add to a conditioning."""

from __future__ import annotations

import json
import logging
import os

import folder_paths
import torch
from comfy_api.latest import io

from ..core import conditioning as cc
from ..core import encoder as encoder_core
from ..core import steering as core
from ..core import validation
from . import CATEGORY
from . import encoder as encoder_nodes
from ._internals.dit import refine_captions
from ._internals.models import check_zimage_model
from ._internals.server import progress_bar
from ._internals.text import has_llama_template

FOLDER = "steering_vectors"
SUBCATEGORY = f"{CATEGORY}/steering"
SteeringVectorType = io.Custom("ZIMAGE_STEERING_VECTOR")
LAYER_RANGE = {"min": -64, "max": -1}


def register_folder() -> None:
    """Make models/steering_vectors a ComfyUI model folder that lists .safetensors files."""
    path = os.path.join(folder_paths.models_dir, FOLDER)
    if FOLDER in folder_paths.folder_names_and_paths:
        paths, _ = folder_paths.folder_names_and_paths[FOLDER]
        if path not in paths:
            paths.append(path)
        folder_paths.folder_names_and_paths[FOLDER] = (paths, {".safetensors"})
    else:
        folder_paths.folder_names_and_paths[FOLDER] = ([path], {".safetensors"})


def on_load() -> None:
    register_folder()


def vector_files() -> list[str]:
    register_folder()
    return folder_paths.get_filename_list(FOLDER)


def check_zimage_clip(clip) -> None:
    if not has_llama_template(clip):
        raise ValueError("clip is not a Z-Image text encoder: load qwen_3_4b.safetensors with CLIPLoader type lumina2")


def _token_ids(tokens: dict) -> list[int]:
    """Token ids of a ComfyUI tokenize() result ({encoder: [[(id, weight), ...]]}, one batch)."""
    return [int(t[0]) for batch in next(iter(tokens.values())) for t in batch]


def encode_prompts(clip, texts: list[str], layer: int, template: str, progress=None) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    """Qwen3 hidden states at `layer` and the content span of each prompt, via ComfyUI's CLIP.

    The one place prompts are encoded for steering. Layers count as in the Z-Image Qwen3 Encoder
    (core.encoder: -1 after the final norm, -2 = CLIPTextEncode), read from the same all-layer pass;
    the template frames the prompt exactly as ComfyUI's Z-Image tokenizer does.
    """
    check_zimage_clip(clip)
    prefix, suffix = core.split_template(template)
    reader = encoder_nodes.adapter_for(clip)
    recipe = encoder_core.layer_recipe(layer, "", reader.num_layers)
    prefix_ids = _token_ids(clip.tokenize(prefix, llama_template="{}")) if prefix else []
    suffix_ids = _token_ids(clip.tokenize(suffix, llama_template="{}")) if suffix else []
    out = []
    for text in texts:
        tokens = clip.tokenize(text, llama_template=template)
        span = core.template_span(_token_ids(tokens), prefix_ids, suffix_ids)
        hidden, _ = reader.hidden_states(tokens)
        out.append((encoder_core.select_layers(hidden, recipe), span))
        if progress is not None:
            progress.update(1)
    return out


class SteeringVectorBuild(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabSteeringVectorBuild",
            display_name="Build Steering Vector",
            category=SUBCATEGORY,
            description=(
                "Builds a steering direction from two prompt lists: mean over prompts of the mean hidden state of each "
                "prompt's content tokens, A minus B. Chat-template tokens are left out of the pooling (identical in "
                "every prompt, they would dominate the mean). In 'embedding' space the hidden states are the Qwen3 "
                "layer the DiT reads; in 'refined' space they are the caption tokens after the DiT's caption embedder "
                "and context refiner (connect the model)."
            ),
            search_aliases=["steering", "condelta", "direction", "style vector", "concept vector"],
            inputs=[
                io.Clip.Input("clip", tooltip="The Z-Image text encoder (CLIPLoader qwen_3_4b.safetensors, type lumina2)."),
                io.String.Input("prompts_a", multiline=True, default="an oil painting of a harbour\nan oil painting of a forest",
                                tooltip="Prompts with the concept to steer towards, one per line."),
                io.String.Input("prompts_b", multiline=True, default="a photo of a harbour\na photo of a forest",
                                tooltip="Matching prompts without it, one per line (the vector is A minus B)."),
                io.Int.Input("layer", default=-2, **LAYER_RANGE,
                             tooltip="Qwen3 hidden layer to read, numbered as in the Z-Image Qwen3 Encoder: -1 = last layer "
                                     "after the final norm, -2 = what Z-Image reads (CLIPTextEncode), down to -36. Apply "
                                     "the vector to conditioning encoded at the same layer."),
                io.String.Input("template", multiline=True, default=cc.DEFAULT_TEMPLATE,
                                tooltip="Chat template around each prompt, with {} where the prompt goes. The default is "
                                        "ComfyUI's Z-Image template."),
                io.Boolean.Input("normalize", default=False,
                                 tooltip="Scale the vector to unit length (alpha then is the step length). Off keeps the "
                                         "raw difference (alpha 1 = the full A-to-B difference)."),
                io.Combo.Input("space", options=list(core.SPACES), default="embedding",
                               tooltip="embedding: Qwen3 hidden states (use with Apply Steering). refined: caption tokens "
                                       "after the context refiner (needs model; use with Refined Steering)."),
                io.Model.Input("model", optional=True,
                               tooltip="The Z-Image model, needed for space 'refined' (its caption embedder and context "
                                       "refiner are run on each prompt)."),
            ],
            outputs=[
                SteeringVectorType.Output("vector", tooltip="The steering vector with its layer, template, space and norm."),
                io.String.Output("info", tooltip="JSON record of how the vector was made."),
            ],
        )

    @classmethod
    def execute(cls, clip, prompts_a, prompts_b, layer, template, normalize, space, model=None) -> io.NodeOutput:
        a = core.parse_prompts(validation.bounded_text(prompts_a, "prompts_a"), "prompts_a")
        b = core.parse_prompts(validation.bounded_text(prompts_b, "prompts_b"), "prompts_b")
        core.split_template(template)
        if space == "refined" and model is None:
            raise ValueError("space is 'refined' but no model is connected: connect the Z-Image MODEL (its context "
                             "refiner makes the refined caption tokens)")
        if space == "refined":
            check_zimage_model(model)
        progress = progress_bar(len(a) + len(b))
        encoded = encode_prompts(clip, a + b, layer, template, progress)
        if space == "refined":
            check_zimage_model(model, caption_width=encoded[0][0].shape[-1])
            encoded = [(refine_captions(model, hidden), span) for hidden, span in encoded]
        pooled = [core.pool_content(hidden, span) for hidden, span in encoded]
        vector = core.make_vector(pooled[:len(a)], pooled[len(a):], layer=layer, template=template, space=space,
                                  prompts_a=a, prompts_b=b, normalize=normalize)
        info = {"node": "ZImageLabSteeringVectorBuild", **vector.record(),
                "content_tokens_a": [s[1] - s[0] for _, s in encoded[:len(a)]],
                "content_tokens_b": [s[1] - s[0] for _, s in encoded[len(a):]]}
        return io.NodeOutput(vector, json.dumps(info), ui={"text": [vector.describe()]})


class SteeringVectorSave(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabSteeringVectorSave",
            display_name="Save Steering Vector",
            category=SUBCATEGORY,
            description=("Saves a steering vector as .safetensors with its metadata (layer, template, space, prompts, "
                         "norm) into models/steering_vectors, where Load Steering Vector lists it."),
            inputs=[
                SteeringVectorType.Input("vector", tooltip="The vector to save."),
                io.String.Input("filename_prefix", default="zimage_lab/steering",
                                tooltip="Path under models/steering_vectors; a counter and .safetensors are appended."),
            ],
            outputs=[io.String.Output("vector_name", tooltip="The saved file's name as Load Steering Vector lists it.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, vector, filename_prefix) -> io.NodeOutput:
        filename_prefix = validation.filename_prefix(filename_prefix)
        register_folder()
        root = folder_paths.get_folder_paths(FOLDER)[0]
        os.makedirs(root, exist_ok=True)
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, root)
        os.makedirs(folder, exist_ok=True)
        name = f"{filename}_{counter:05}_.safetensors"
        core.save_vector(vector, os.path.join(folder, name))
        relative = os.path.join(subfolder, name).replace(os.sep, "/").lstrip("/")
        return io.NodeOutput(relative, ui={"text": [f"saved {relative}: {vector.describe()}"], "vector_name": [relative]})


class SteeringVectorLoad(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabSteeringVectorLoad",
            display_name="Load Steering Vector",
            category=SUBCATEGORY,
            description="Loads a steering vector saved by Save Steering Vector from models/steering_vectors, bit for bit "
                        "with its metadata.",
            inputs=[io.Combo.Input("vector_name", options=vector_files(),
                                   tooltip="A .safetensors steering vector in models/steering_vectors.")],
            outputs=[
                SteeringVectorType.Output("vector", tooltip="The loaded vector with its layer, template, space and norm."),
                io.String.Output("info", tooltip="JSON record of the vector's metadata."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, vector_name):
        path = folder_paths.get_full_path(FOLDER, vector_name)
        return None if path is None else (os.path.getmtime(path), os.path.getsize(path))

    @classmethod
    def execute(cls, vector_name) -> io.NodeOutput:
        register_folder()
        path = folder_paths.get_full_path(FOLDER, vector_name)
        if path is None:
            raise ValueError(f"vector_name {vector_name!r} is not in models/{FOLDER}: save one with Save Steering Vector "
                             "or copy the .safetensors file there")
        vector = core.with_name(core.load_vector(path), os.path.splitext(vector_name)[0])
        return io.NodeOutput(vector, json.dumps({"node": "ZImageLabSteeringVectorLoad", **vector.record()}),
                             ui={"text": [vector.describe()]})


def _mismatch_warnings(vector, extras) -> list[str]:
    record = cc.lab_metadata(extras)
    template = record.get("template", cc.DEFAULT_TEMPLATE)
    template = cc.DEFAULT_TEMPLATE if template == "default" else template  # the Qwen3 Encoder records a name
    warnings = [w for w in (core.layer_mismatch(vector, record),) if w]
    if isinstance(template, str) and template != "formatted" and template != vector.template:
        warnings.append(f"vector {vector.name or ''} was made with another chat template than the conditioning's")
    return warnings


class SteeringApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabSteeringApply",
            display_name="Apply Steering",
            category=SUBCATEGORY,
            description=("Adds alpha times each steering vector to the conditioning's tokens (embedding space). alpha 0 "
                         "returns the conditioning unchanged; vectors compose by adding. A vector of another width is "
                         "an error, one made at another layer or template a warning."),
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="Z-Image conditioning (CLIPTextEncode or Z-Image Lab encoder)."),
                SteeringVectorType.Input("vector", tooltip="An embedding-space steering vector."),
                io.Float.Input("alpha", default=1.0, min=-100.0, max=100.0, step=0.05, round=0.0001,
                               tooltip="Multiple of the vector to add; negative steers towards B. 0 changes nothing."),
                io.Combo.Input("scope", options=list(core.SCOPES), default="content tokens",
                               tooltip="content tokens: only the prompt's own tokens (the template tokens keep their role "
                                       "signal). all tokens: every caption token."),
                SteeringVectorType.Input("vector_2", optional=True, tooltip="Optional second vector, added too."),
                io.Float.Input("alpha_2", default=0.0, min=-100.0, max=100.0, step=0.05, round=0.0001, optional=True,
                               tooltip="Multiple of vector_2."),
                SteeringVectorType.Input("vector_3", optional=True, tooltip="Optional third vector, added too."),
                io.Float.Input("alpha_3", default=0.0, min=-100.0, max=100.0, step=0.05, round=0.0001, optional=True,
                               tooltip="Multiple of vector_3."),
            ],
            outputs=[io.Conditioning.Output(tooltip="The steered conditioning; what was added is recorded in its metadata.")],
        )

    @classmethod
    def execute(cls, conditioning, vector, alpha, scope, vector_2=None, alpha_2=0.0, vector_3=None,
                alpha_3=0.0) -> io.NodeOutput:
        cc.require_tokens(conditioning, "conditioning")
        if scope not in core.SCOPES:
            raise ValueError(f"scope is {scope!r}: choose one of {', '.join(core.SCOPES)}")
        given = [(v, validation.finite(a, name), socket) for v, a, name, socket in (
            (vector, alpha, "alpha", "vector"), (vector_2, alpha_2, "alpha_2", "vector_2"),
            (vector_3, alpha_3, "alpha_3", "vector_3")) if v is not None]
        for v, _, socket in given:
            if v.space != "embedding":
                raise ValueError(f"{socket} {v.name or ''} is a {v.space}-space vector: use Refined Steering for it "
                                 "(Apply Steering adds embedding-space vectors to the conditioning)")
            try:
                core.check_width(v, conditioning[0][0].shape[-1], "the conditioning")
            except ValueError as err:
                raise ValueError(f"{socket}: {err}") from None
        pairs = [(v, a) for v, a, _ in given]
        delta = core.combined_delta(pairs)
        records = [{**v.record(), "alpha": a, "scope": scope} for v, a in pairs]
        warnings = sorted({w for v, a in pairs if a != 0.0 for _, extras in conditioning for w in _mismatch_warnings(v, extras)})
        for w in warnings:
            logging.warning("Z-Image Lab Apply Steering: %s", w)

        def steer(tokens, extras):
            if delta is not None:
                span = cc.content_span(extras, tokens.shape[1]) if scope == "content tokens" else None
                tokens = core.add_to_tokens(tokens, delta, span)
            previous = cc.lab_metadata(extras).get("steering", [])
            return tokens, cc.with_metadata(extras, steering=[*previous, *records])

        out = cc.map_conditioning(conditioning, steer)
        summary = ", ".join(f"{a:+g} x {v.name or 'vector'}" for v, a in pairs)
        return io.NodeOutput(out, ui={"text": [f"added {summary} to {scope}", *warnings]})


NODES = [SteeringVectorBuild, SteeringVectorSave, SteeringVectorLoad, SteeringApply]
