"""Tokenizers and text-encoder internals: ComfyUI's Z-Image tokenizer, its front end, its Qwen3 CLIP."""

from __future__ import annotations

import functools
import json

import comfy.sd1_clip
import folder_paths


@functools.lru_cache(maxsize=1)
def z_image_tokenizer():
    """ComfyUI's ZImageTokenizer as CLIPLoader type lumina2 creates it, loaded once (no model).

    ``comfy/text_encoders/z_image.py`` ``ZImageTokenizer`` (Qwen2Tokenizer files in
    comfy/text_encoders/qwen25_tokenizer, the embeddings folders). Checked: 0.18.1, 0.30.2 (file identical).
    """
    from comfy.text_encoders.z_image import ZImageTokenizer

    return ZImageTokenizer(embedding_directory=folder_paths.get_folder_paths("embeddings"))


def tokenize_exact(text: str) -> list:
    """[(token, weight), ...] of exactly this text (no template) through ZImageTokenizer's front end."""
    tokenizer = z_image_tokenizer()
    return [entry for batch in tokenizer.tokenize_with_weights(text, llama_template="{}")[tokenizer.clip_name]
            for entry in batch]


def z_image_qwen_tokenizer():
    """The Qwen2Tokenizer inside ZImageTokenizer (``SD1Tokenizer.<clip>.tokenizer``), for decoding ids."""
    tokenizer = z_image_tokenizer()
    return getattr(tokenizer, tokenizer.clip).tokenizer


def hf_tokenizer(clip):
    """The transformers tokenizer inside a CLIP's tokenizer (``comfy/sd1_clip.py`` ``SD1Tokenizer`` keeps
    it at ``<clip name>.tokenizer``), or None. Checked: 0.18.1, 0.30.2."""
    outer = clip.tokenizer
    inner = getattr(outer, getattr(outer, "clip", ""), None)
    return getattr(inner, "tokenizer", None)


def has_llama_template(clip) -> bool:
    """Whether a CLIP's tokenizer frames prompts with a chat template (ZImageTokenizer.llama_template)."""
    return clip is not None and getattr(clip.tokenizer, "llama_template", None) is not None


class FrontEnd(comfy.sd1_clip.SDTokenizer):
    """ComfyUI's tokenizer front end (\\( un-escaping, ``embedding:name``) over a folder's own tokenizer.

    Built like ``comfy/text_encoders/z_image.py`` ``Qwen3Tokenizer`` (no start/end token, no padding,
    no length limit) with transformers' AutoTokenizer. ``comfy/sd1_clip.py`` ``SDTokenizer.__init__``
    signature checked: 0.18.1, 0.30.2 (identical).
    """

    def __init__(self, folder: str, width: int, pad_token: int):
        from transformers import AutoTokenizer

        super().__init__(folder, pad_with_end=False, embedding_directory=folder_paths.get_folder_paths("embeddings"),
                         embedding_size=width, embedding_key="qwen3", tokenizer_class=AutoTokenizer,
                         has_start_token=False, has_end_token=False, pad_to_max_length=False, max_length=99999999,
                         min_length=1, pad_token=pad_token)


def is_stock_qwen3(clip) -> bool:
    """Whether a CLIP is ComfyUI's own Qwen3-4B (``comfy/text_encoders/z_image.py`` ``ZImageTEModel.qwen3_4b``)."""
    return hasattr(getattr(clip, "cond_stage_model", None), "qwen3_4b")


def has_scheduled_hooks(clip) -> bool:
    """Whether a CLIP carries CLIP Set Hooks hooks (``comfy/model_patcher.py`` ``ModelPatcher.forced_hooks``)."""
    return getattr(clip.patcher, "forced_hooks", None) is not None


class StockQwen3:
    """ComfyUI's own Qwen3 CLIP (CLIPLoader type lumina2): all hidden states from one encode_from_tokens.

    Relies on ``comfy/sd1_clip.py`` ``SDClipModel`` with ``layer="hidden"`` and a list ``layer_idx``
    (``clip_layer(list)``) and on ``comfy/text_encoders/llama.py`` ``Llama2_.forward`` collecting x
    before every listed layer and the normed output for index n: transformers' hidden_states[0..n],
    each layer computed exactly as for one layer. Checked: 0.18.1, 0.30.2.
    """

    def __init__(self, clip):
        self.clip = clip
        self.inner = clip.cond_stage_model.qwen3_4b
        self.owner = clip.cond_stage_model
        self.num_layers = int(self.inner.num_layers)
        self.name = "comfyui"

    def identity(self) -> tuple:
        options = json.dumps(self.clip.tokenizer_options, sort_keys=True, default=str)
        return ("comfyui", str(self.clip.patcher.patches_uuid), options)

    def tokenize_exact(self, text: str) -> dict:
        return self.clip.tokenize(text, llama_template="{}")

    def hidden_states(self, tokens: dict):
        clip = self.clip.clone()
        clip.clip_layer(list(range(self.num_layers + 1)))
        try:
            out = clip.encode_from_tokens(tokens, return_dict=True)
        finally:
            self.clip.cond_stage_model.reset_clip_options()
        return out["cond"], out.get("attention_mask")

    def project(self, tokens):
        return tokens
