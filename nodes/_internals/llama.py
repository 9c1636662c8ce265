"""ComfyUI text-encoder internals: the Llama/Qwen3 decoder stack (``comfy/text_encoders/llama.py`` ``Llama2_``)
replayed from CUDA graphs, and the CLIP encode path (``comfy/sd.py`` ``CLIP``, ``comfy/sd1_clip.py``
``SDClipModel.encode_token_weights``) answered from a process-wide cache.

Checked against ComfyUI 0.18.1 and 0.30.2; ``Llama2_.forward`` of later releases (0.36-0.38, read in
Comfy-Org/ComfyUI) adds ``input_ids``, ``deepstack_embeds``, ``visual_pos_masks`` (and ``decode_buffers``):
keyword arguments this stand-in does not know are passed through, and any that is set takes the plain forward.
"""

from __future__ import annotations

import torch

from ...core import accelerate as core
from .graphs import weights_signature

TEXT_ENCODER_GRAPH = ("off", "on", "on + TF32", "on + bf16")
"""graph_text_encoder settings."""

def _clip_options_key(cond_stage_model) -> tuple:
    """The per-call options ComfyUI set on the encoder (layer, layer index, pooled projection)."""
    found = []
    for name, module in cond_stage_model.named_modules():
        if hasattr(module, "layer_idx") and hasattr(module, "layer"):
            found.append((name, core.freeze(module.layer), core.freeze(module.layer_idx),
                          core.freeze(getattr(module, "return_projected_pooled", None))))
    return tuple(found)


def cached_encode_token_weights(cond_stage_model):
    """encode_token_weights through ENCODE_CACHE, keyed by tokens, encoder options and applied weight patches."""
    original = type(cond_stage_model).encode_token_weights

    def encode_token_weights(token_weight_pairs):
        key = ("encode", core.freeze(token_weight_pairs), _clip_options_key(cond_stage_model),
               str(getattr(cond_stage_model, "current_weight_patches_uuid", None)))
        return core.ENCODE_CACHE.get_or_compute(cond_stage_model, key,
                                                lambda: original(cond_stage_model, token_weight_pairs))

    return encode_token_weights


def _frozen_conditioning(value):
    """A fresh outer list (and extras dicts) around cached conditioning tensors, so callers can append freely."""
    return [[cond, extras.copy()] if isinstance(extras, dict) else [cond, extras] for cond, extras in value]


class GraphedTextModel(torch.nn.Module):
    """Stands in for the Qwen3 decoder stack: replays each forward from a CUDA graph per padded length.

    Inputs are padded at the end to a multiple of 32 tokens (causal attention, pads masked: the
    real tokens' hidden states are unchanged) so that prompts of similar length share a graph.
    Falls back to the plain forward where a graph cannot be used (CPU, dynamic VRAM loading,
    key/value caches for generation, embeddings other than tokens). With bf16, ComfyUI's float32
    activations become bfloat16 (the checkpoint's own dtype, so no weight is cast) on both paths.
    """

    def __init__(self, inner: torch.nn.Module, graphs: core.GraphRunner, tf32: bool = False, bf16: bool = False):
        super().__init__()
        self._modules = dict(inner._modules)
        object.__setattr__(self, "original", inner)
        object.__setattr__(self, "graphs", graphs)
        object.__setattr__(self, "tf32", tf32)
        object.__setattr__(self, "bf16", bf16)
        object.__setattr__(self, "replays", 0)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "original"), name)

    def _graphable(self, x, embeds, position_ids, embeds_info, past_key_values, intermediate_output) -> bool:
        if x is not None or embeds is None or not embeds.is_cuda or position_ids is not None or embeds_info:
            return False
        if past_key_values is not None or not (intermediate_output is None or isinstance(intermediate_output, int)):
            return False
        if torch.cuda.is_current_stream_capturing():
            return False
        return weights_signature(self, embeds.device) is not None

    def forward(self, x, attention_mask=None, embeds=None, num_tokens=None, intermediate_output=None,
                final_layer_norm_intermediate=True, dtype=None, position_ids=None, embeds_info=[], past_key_values=None,
                **newer):
        original = self.original
        newer = {k: v for k, v in newer.items() if v is not None}  # unset: the older signature's call
        if self.bf16 and embeds is not None and embeds.dtype == torch.float32:
            embeds, dtype = embeds.to(torch.bfloat16), torch.bfloat16
        if newer or self.graphs.failed or not self._graphable(
                x, embeds, position_ids, embeds_info, past_key_values, intermediate_output):
            return original(x, attention_mask, embeds=embeds, num_tokens=num_tokens,
                            intermediate_output=intermediate_output,
                            final_layer_norm_intermediate=final_layer_norm_intermediate, dtype=dtype,
                            position_ids=position_ids, embeds_info=embeds_info, past_key_values=past_key_values,
                            **newer)
        length = embeds.shape[1]
        padded, mask = core.pad_tokens(embeds, attention_mask, 32)
        key = (tuple(padded.shape), str(padded.dtype), mask is None, intermediate_output,
               final_layer_norm_intermediate, str(dtype), weights_signature(self, embeds.device))

        def run(e, m):
            return original(None, m, embeds=e, num_tokens=num_tokens, intermediate_output=intermediate_output,
                            final_layer_norm_intermediate=final_layer_norm_intermediate, dtype=dtype)

        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.tf32 or previous  # only consulted while capturing
        try:
            out, _ = self.graphs.run(key + (self.tf32,), run, padded, mask)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
        object.__setattr__(self, "replays", self.replays + 1)
        return tuple(o[:, :length] if isinstance(o, torch.Tensor) and o.ndim == 3 else o for o in out)


def _text_model_path(cond_stage_model) -> str | None:
    """Dotted path (inside the CLIP's patcher model) of the decoder stack to graph, if it is a ComfyUI Llama."""
    for name, module in cond_stage_model.named_modules():
        if name.endswith("transformer.model") and hasattr(module, "layers") and hasattr(module, "embed_tokens"):
            return name
    return None




def accelerate_clip(clip, cache: bool = True, graphs: str = "off"):
    """A CLIP clone whose tokenizing and encoding go through the process-wide cache.

    Two levels: this clone answers a repeated (tokens, layer, patches) request before ComfyUI even
    loads the encoder (under a millisecond); and an object patch on the encoder, which survives
    further clones (CLIPSetLastLayer, LoRA loaders), caches by tokens, encoder options and the
    weight patches actually applied.
    """
    if cache and clip.patcher.forced_hooks is not None:
        raise ValueError("clip has scheduled hooks: cached encodes cannot follow hook keyframes. "
                         "Turn cache_text_encodes off for this CLIP.")
    patched = clip.clone()
    cond_stage_model = clip.cond_stage_model
    if graphs not in TEXT_ENCODER_GRAPH:
        raise ValueError(f"graph_text_encoder is {graphs!r}: choose one of {', '.join(TEXT_ENCODER_GRAPH)}.")
    if graphs != "off":
        path = _text_model_path(cond_stage_model)
        if path is None:
            raise ValueError("graph_text_encoder is on but this CLIP has no ComfyUI Llama/Qwen3 decoder stack: "
                             "use it with the Z-Image text encoder (qwen_3_4b.safetensors, type lumina2).")
        inner = patched.patcher.get_model_object(path)
        if isinstance(inner, GraphedTextModel):
            inner = inner.original
        patched.patcher.add_object_patch(path, GraphedTextModel(inner, core.GraphRunner(max_graphs=8, warmup=1),
                                                                tf32=graphs == "on + TF32", bf16=graphs == "on + bf16"))
    if not cache:
        return patched
    patched.patcher.add_object_patch("encode_token_weights", cached_encode_token_weights(cond_stage_model))
    tokenize = patched.tokenize
    encode_scheduled = patched.encode_from_tokens_scheduled

    def cached_tokenize(text, return_word_ids=False, **kwargs):
        key = ("tokenize", text, return_word_ids, core.freeze(kwargs), core.freeze(patched.tokenizer_options))
        return core.ENCODE_CACHE.get_or_compute(patched.tokenizer, key,
                                                lambda: tokenize(text, return_word_ids=return_word_ids, **kwargs))

    def cached_encode_from_tokens_scheduled(tokens, unprojected=False, add_dict={}, show_pbar=True):
        if patched.patcher.forced_hooks is not None:
            return encode_scheduled(tokens, unprojected=unprojected, add_dict=add_dict, show_pbar=show_pbar)
        p = patched.patcher
        key = ("scheduled", core.freeze(tokens), unprojected, core.freeze(add_dict), core.freeze(patched.layer_idx),
               str(p.patches_uuid), tuple(sorted((k, id(v)) for k, v in p.object_patches.items())))
        value = core.ENCODE_CACHE.get_or_compute(
            cond_stage_model, key, lambda: encode_scheduled(tokens, unprojected=unprojected, add_dict=add_dict,
                                                             show_pbar=show_pbar))
        return _frozen_conditioning(value)

    patched.tokenize = cached_tokenize
    patched.encode_from_tokens_scheduled = cached_encode_from_tokens_scheduled
    return patched
