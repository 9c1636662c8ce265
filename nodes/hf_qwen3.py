"""Load HF Qwen3: a transformers Qwen3 folder as a CLIP that Z-Image's text nodes accept."""

from __future__ import annotations

import copy
import os

import folder_paths
import torch
from comfy_api.latest import io

from ..core import encoder as core_encoder
from ..core.conditioning import DEFAULT_TEMPLATE
from ..core import hf_qwen3 as core
from . import CATEGORY
from ._internals import models
from ._internals.text import FrontEnd

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def model_folders() -> list[str]:
    """Folders with a config.json under ComfyUI's text_encoders folders."""
    return core.find_model_folders(folder_paths.get_folder_paths("text_encoders"))


def folder_path(name: str) -> str:
    for root in folder_paths.get_folder_paths("text_encoders"):
        path = os.path.join(root, *name.split("/"))
        if os.path.isdir(path):
            return path
    raise ValueError(f"model_folder {name!r} is not in any text_encoders folder "
                     f"({', '.join(folder_paths.get_folder_paths('text_encoders'))})")


def pick_dtype(choice: str, device) -> torch.dtype:
    """float32 on the CPU, bfloat16 on accelerators that support it, unless chosen."""
    if choice != "auto":
        return core.DTYPES[choice]
    return models.default_dtype(device)


class _Holder(torch.nn.Module):
    """Lets ComfyUI's ModelPatcher load and offload the transformers model like its own encoders."""

    def __init__(self, model):
        super().__init__()
        self.qwen3 = model


class HFQwen3CLIP:
    """A transformers Qwen3 with ComfyUI's CLIP interface: tokenize, encode_from_tokens(_scheduled), clone.

    CLIPTextEncode reads layer -2 (or the layer of CLIPSetLastLayer) and applies the attached projector;
    the Z-Image Qwen3 Encoder reads every hidden state through ``hidden_states``.
    """

    zimage_lab_encoder = True

    def __init__(self, model, front_end, name: str, patcher):
        self.model, self.front_end, self.name, self.patcher = model, front_end, name, patcher
        self.projector = None
        self.layer_idx = None
        self.tokenizer_options = {}
        self.num_layers = core.num_layers(model)
        self.hidden_size = core.hidden_size(model)

    @classmethod
    def load(cls, folder: str, name: str, dtype_choice: str = "auto") -> "HFQwen3CLIP":
        config = core.read_config(folder)
        load_device, offload_device = models.text_encoder_devices()
        model = core.load_folder(folder, pick_dtype(dtype_choice, load_device))
        pad = config.get("pad_token_id") or config.get("bos_token_id") or 151643
        front_end = FrontEnd(folder, core.hidden_size(model), pad)
        patcher = models.model_patcher(_Holder(model), load_device, offload_device)
        return cls(model, front_end, f"transformers:{name}", patcher)

    # --- what our encoder node uses
    @property
    def owner(self):
        return self.model

    def identity(self) -> tuple:
        return (self.name, str(self.model.dtype))

    def tokenize(self, text: str, return_word_ids: bool = False, llama_template: str | None = None, **kwargs) -> dict:
        template = DEFAULT_TEMPLATE if llama_template is None else llama_template
        return {"qwen3": self.front_end.tokenize_with_weights(template.format(text), return_word_ids, disable_weights=True)}

    def tokenize_exact(self, text: str) -> dict:
        """Tokens of exactly this text (no template added)."""
        return self.tokenize(text, llama_template="{}")

    def hidden_states(self, tokens: dict):
        """[1, n+1, L, W] float32 hidden states of one forward pass, and the all-ones attention mask."""
        (batches,) = tokens.values()
        entries = [entry[0] for batch in batches for entry in batch]
        self.load_model()
        device = self.patcher.load_device
        if all(isinstance(t, int) for t in entries):
            hidden = core.hidden_states(self.model, input_ids=torch.tensor([entries], device=device))
        else:
            hidden = core.hidden_states(self.model, inputs_embeds=self._embeds(entries, device))
        mask = torch.ones(1, len(entries), dtype=torch.long)
        return hidden.to(models.intermediate_device()), mask

    def _embeds(self, entries, device) -> torch.Tensor:
        """Input embeddings with ComfyUI textual-inversion vectors spliced in where the tokenizer put them."""
        table = self.model.get_input_embeddings()
        rows = []
        for t in entries:
            if isinstance(t, int):
                rows.append(table(torch.tensor([t], device=device)))
            else:
                vec = t.reshape(-1, t.shape[-1]).to(device=device, dtype=table.weight.dtype)
                if vec.shape[-1] != self.hidden_size:
                    raise ValueError(f"an embedding: file has width {vec.shape[-1]}, this Qwen3 has {self.hidden_size}")
                rows.append(vec)
        return torch.cat(rows).unsqueeze(0)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.projector is None:
            return tokens
        with torch.no_grad():
            return self.projector.float()(tokens.float())

    # --- ComfyUI's CLIP interface
    def clone(self) -> "HFQwen3CLIP":
        n = copy.copy(self)
        n.patcher = self.patcher.clone()
        n.tokenizer_options = dict(self.tokenizer_options)
        return n

    def with_projector(self, projector) -> "HFQwen3CLIP":
        n = self.clone()
        n.projector = projector
        return n

    def clip_layer(self, layer_idx: int) -> None:
        self.layer_idx = layer_idx

    def set_tokenizer_option(self, option_name, value) -> None:
        self.tokenizer_options[option_name] = value

    def load_model(self, tokens=None):
        # full loads only: transformers' layers are not ComfyUI ops, so they cannot be partially offloaded
        models.load_models([self.patcher], full=True)
        return self.patcher

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        layer = self.layer_idx if self.layer_idx is not None else core_encoder.DEFAULT_LAYER
        hidden, mask = self.hidden_states(tokens)
        layer = layer if -self.num_layers <= layer <= -1 else -1  # as ComfyUI: out of range reads the last layer
        cond = self.project(core_encoder.select_layers(hidden, [(layer, 1.0)]))
        if return_dict:
            return {"cond": cond, "pooled_output": None, "attention_mask": mask}
        return (cond, None) if return_pooled else cond

    def encode_from_tokens_scheduled(self, tokens, unprojected=False, add_dict={}, show_pbar=True):
        out = self.encode_from_tokens(tokens, return_dict=True)
        cond = out.pop("cond")
        return [[cond, {**out, **add_dict}]]

    def encode(self, text):
        return self.encode_from_tokens(self.tokenize(text))

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        raise ValueError("LoRA patches cannot be applied to a transformers Qwen3 from Load HF Qwen3: "
                         "merge the LoRA into the Hugging Face folder, or use CLIPLoader's Qwen3-4B")

    def get_key_patches(self):
        return {}

    def get_sd(self):
        return {f"model.{k}": v for k, v in self.model.state_dict().items()}


class HFQwen3Loader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabHFQwen3Loader",
            display_name="Load HF Qwen3 (transformers)",
            category=f"{CATEGORY}/prompt",
            description=(
                "Loads a Hugging Face Qwen3 folder (config.json + *.safetensors + tokenizer files) from ComfyUI's "
                "models/text_encoders with transformers, as a CLIP for the Z-Image Qwen3 Encoder or CLIPTextEncode: "
                "Qwen3-4B in transformers form, an instruct variant, or a smaller Qwen3 (then attach a projector with "
                "Load Qwen3 Projector, since Z-Image reads width 2560). On the same weights it matches CLIPLoader's "
                "Qwen3 to float rounding. Tokenization goes through ComfyUI's front end, as CLIPLoader's does."
            ),
            search_aliases=["transformers", "hugging face", "qwen3 folder", "text encoder loader"],
            inputs=[
                io.Combo.Input("model_folder", options=model_folders(),
                               tooltip="A folder under models/text_encoders holding config.json (model_type qwen3), "
                                       "*.safetensors and tokenizer.json or vocab.json + merges.txt."),
                io.Combo.Input("dtype", options=list(DTYPE_CHOICES), default="auto",
                               tooltip="Weight dtype. auto: float32 on the CPU, bfloat16 (or float16) on a GPU. Hidden "
                                       "states are returned as float32 either way."),
            ],
            outputs=[io.Clip.Output("CLIP", tooltip="The Qwen3 as a CLIP (text encoder).")],
        )

    @classmethod
    def execute(cls, model_folder, dtype="auto") -> io.NodeOutput:
        path = folder_path(model_folder)
        try:
            core.read_config(path)  # the folder's config checked first, so its error names the input
        except ValueError as err:
            raise ValueError(f"model_folder: {err}") from None
        return io.NodeOutput(HFQwen3CLIP.load(path, model_folder, dtype))


NODES = [HFQwen3Loader]
