"""Z-Image Accelerate: the same maths faster on NVIDIA GPUs, as patches on clones of MODEL, CLIP and VAE."""

from __future__ import annotations

import copy
import json
import logging

import comfy.ops
import comfy.patcher_extension
import torch
from comfy_api.latest import io

from ..core import accelerate as core
from . import CATEGORY

WRAPPER_KEY = "zimage_lab_accelerate"
BLOCK_GROUPS = ("layers", "noise_refiner", "context_refiner")

# --------------------------------------------------------------------------------------------
# weights


def _plain(module: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether a module's own parameters can be used as they are (no casting, no on-the-fly patches)."""
    weight = getattr(module, "weight", None)
    return (weight is not None and not getattr(module, "comfy_cast_weights", False)
            and not getattr(module, "weight_function", None) and not getattr(module, "bias_function", None)
            and weight.device == x.device and weight.dtype == x.dtype)


class WeightFetcher:
    """Gets a block's weights ready for one call the way ComfyUI's ops would, and releases them after."""

    def __init__(self, x: torch.Tensor):
        self.x = x
        self.held = []
        self.all_plain = True

    def get(self, module):
        if module is None or isinstance(module, torch.nn.Identity):
            return None, None
        if _plain(module, self.x):
            return module.weight, module.bias
        self.all_plain = False
        weight, bias, handle = comfy.ops.cast_bias_weight(module, self.x, offloadable=True)
        self.held.append((module, weight, bias, handle))
        return weight, bias

    def release(self):
        for module, weight, bias, handle in self.held:
            comfy.ops.uncast_bias_weight(module, weight, bias, handle)
        self.held.clear()


def _state(t: torch.Tensor) -> tuple:
    """Where a tensor's data lives and how often it was written (inference tensors keep no counter)."""
    try:
        version = t._version
    except RuntimeError:  # created under torch.inference_mode, as ComfyUI's loaders do
        version = None
    return t.data_ptr(), version


class Fp8Cache:
    """FP8 copies of resident Linear weights, remade when a weight is replaced or moved (LoRA patches)."""

    def __init__(self):
        self._entries: dict = {}
        self.generation = 0

    def get(self, weight: torch.Tensor):
        key = id(weight)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is weight and entry[1] == _state(weight):
            return entry[2]
        fp8 = core.quantize_weight(weight)
        self._entries[key] = (weight, _state(weight), fp8)
        self.generation += 1
        return fp8

    def clear(self):
        self._entries.clear()
        self.generation += 1


class Runtime:
    """What every accelerated block of one patched MODEL shares: options, stats, caches."""

    def __init__(self, options: core.AccelerateOptions):
        self.options = options
        self.stats = core.AccelerateStats()
        self.timer = core.ShapeTimer(self.stats)
        self.fp8 = Fp8Cache()
        self.graphs = core.GraphRunner()
        self.block_fn = core.compiled_joint_block(options.compile_tuning) if options.compile_blocks else core.joint_block
        self._backends: dict = {}
        self.resident_copy = False

    def backend(self, x: torch.Tensor, shape: core.BlockShape) -> str:
        """The SDPA backend for this call: measured once per shape for "auto", else as set."""
        choice = self.options.attention
        if choice == "off":
            return "auto"
        if choice != "auto":
            return choice
        key = (tuple(x.shape), shape.n_heads, shape.head_dim, x.dtype, str(x.device))
        if key not in self._backends:
            b, seqlen = x.shape[0], x.shape[1]
            q = torch.randn(b, seqlen, shape.n_heads, shape.head_dim, device=x.device, dtype=x.dtype).transpose(1, 2)
            self._backends[key] = core.ATTENTION.choose(q, q, q)
            self.stats.attention[f"{b}x{seqlen}"] = self._backends[key]
        return self._backends[key]


def _block_shape(block) -> core.BlockShape:
    att = block.attention
    q_norm = att.q_norm
    adaln_silu = bool(block.modulation) and isinstance(block.adaLN_modulation[0], torch.nn.SiLU)
    return core.BlockShape(att.n_local_heads, att.n_local_kv_heads, att.head_dim, block.attention_norm1.eps,
                           getattr(q_norm, "eps", None), bool(block.modulation), adaln_silu)


class AcceleratedBlock(torch.nn.Module):
    """Stands in for a JointTransformerBlock; shares its submodules, so weight names and LoRA keys are unchanged."""

    def __init__(self, block: torch.nn.Module, runtime: Runtime):
        super().__init__()
        self._modules = dict(block._modules)
        object.__setattr__(self, "original", block)
        object.__setattr__(self, "runtime", runtime)
        for name in ("layer_id", "dim", "head_dim", "modulation"):
            if hasattr(block, name):
                setattr(self, name, getattr(block, name))
        self.shape = _block_shape(block)

    def _weights(self, fetch: WeightFetcher, fp8: bool) -> core.BlockWeights:
        att, ff = self.attention, self.feed_forward

        def lin(module):
            weight, bias = fetch.get(module)
            if fp8 and fetch.all_plain and weight is not None and weight.shape[0] % 16 == 0 and weight.shape[1] % 16 == 0:
                weight = self.runtime.fp8.get(weight)
            return weight, bias

        qkv, _ = lin(att.qkv)
        out, out_bias = lin(att.out)
        w1, _ = lin(ff.w1)
        w2, _ = lin(ff.w2)
        w3, _ = lin(ff.w3)
        adaln, adaln_bias = fetch.get(self.adaLN_modulation[-1]) if self.shape.modulation else (None, None)
        return core.BlockWeights(
            qkv=qkv, out=out, out_bias=out_bias, q_norm=fetch.get(att.q_norm)[0], k_norm=fetch.get(att.k_norm)[0],
            w1=w1, w2=w2, w3=w3, attention_norm1=fetch.get(self.attention_norm1)[0],
            attention_norm2=fetch.get(self.attention_norm2)[0], ffn_norm1=fetch.get(self.ffn_norm1)[0],
            ffn_norm2=fetch.get(self.ffn_norm2)[0], adaln=adaln, adaln_bias=adaln_bias)

    def forward(self, x, x_mask, freqs_cis, adaln_input=None, timestep_zero_index=None, transformer_options={}):
        rt = self.runtime
        reason = None
        if x_mask is not None:
            reason = "attention mask"
        elif timestep_zero_index is not None:
            reason = "omni reference latents"
        elif "optimized_attention_override" in transformer_options and not getattr(
                transformer_options["optimized_attention_override"], "zimage_lab", False):
            reason = "another attention override"
        elif self.shape.modulation and adaln_input is None:
            reason = "no adaLN input"
        elif torch.is_grad_enabled() and (x.requires_grad or self.attention.qkv.weight.requires_grad):
            reason = "autograd (training) call"
        if reason is not None:
            rt.stats.fallback(reason)
            return self.original(x, x_mask, freqs_cis, adaln_input, timestep_zero_index=timestep_zero_index,
                                 transformer_options=transformer_options)
        fetch = WeightFetcher(x)
        try:
            fp8 = rt.options.fp8_matmul and (x.device.type == "cpu" or core.fp8_supported(x.device))
            if rt.options.fp8_matmul and not fp8:
                rt.stats.fallback("fp8 needs compute capability 9.0 (Hopper) or newer")
            weights = self._weights(fetch, fp8)
            if fp8 and not isinstance(weights.qkv, core.Fp8Weight):
                rt.stats.fallback("fp8 needs resident weights (no DynamicVRAM streaming or on-the-fly patches)")
            backend = rt.backend(x, self.shape)
            key = (tuple(x.shape), str(x.dtype), self.shape.modulation, backend, isinstance(weights.qkv, core.Fp8Weight))
            with rt.timer.first_call(key):
                out = rt.block_fn(x, freqs_cis, adaln_input if self.shape.modulation else None, weights, self.shape, backend)
            rt.stats.fast_calls += 1
            return out
        finally:
            fetch.release()


# --------------------------------------------------------------------------------------------
# attention alone, CUDA graphs


def attention_override(backend: str, runtime: Runtime):
    """An optimized_attention_override that runs unmasked attention through the chosen SDPA backend."""

    def override(func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                 **kwargs):
        if mask is not None or q.shape != k.shape or q.shape != v.shape:
            return func(q, k, v, heads, mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                        skip_output_reshape=skip_output_reshape, **kwargs)
        if skip_reshape:
            b, _, _, dim_head = q.shape
        else:
            b, _, inner = q.shape
            dim_head = inner // heads
            q, k, v = (t.view(b, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
        name = backend
        if name == "auto":
            name = core.ATTENTION.choose(q, k, v)
            runtime.stats.attention[f"{b}x{q.shape[2]}"] = name
        out = core.sdpa(q, k, v, name)
        if not skip_output_reshape:
            out = out.transpose(1, 2).reshape(b, -1, heads * dim_head)
        return out

    override.zimage_lab = True
    return override


_PARAM_SLOTS: dict = {}


def weights_signature(model: torch.nn.Module, device: torch.device | None = None) -> tuple | None:
    """Addresses of every parameter (a captured graph is only valid while these do not move), or None
    when some weight is not resident on ``device`` (partial loading, DynamicVRAM streaming).

    The (module, name) slots are listed once per model; reading ~600 addresses costs ~0.1 ms.
    """
    key = id(model)
    slots = _PARAM_SLOTS.get(key)
    if slots is None or slots[0]() is not model:
        import weakref

        slots = (weakref.ref(model), [(m, n) for m in model.modules() for n, _ in m.named_parameters(recurse=False)],
                 [m for m in model.modules()])
        _PARAM_SLOTS[key] = slots
    params = [getattr(m, n) for m, n in slots[1]]
    if device is not None and (any(p.device != device for p in params) or any(hasattr(m, "_v") for m in slots[2])):
        return None
    return tuple(p.data_ptr() for p in params)


def graph_wrapper(runtime: Runtime):
    """DIFFUSION_MODEL wrapper that replays the whole forward from a CUDA graph per fixed input shape."""

    def wrapper(executor, x, timesteps, context, num_tokens, attention_mask=None, **kwargs):
        options = kwargs.get("transformer_options", {})
        extra_tensors = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        busy = [k for k, v in kwargs.items() if isinstance(v, (list, tuple)) and len(v) > 0]
        reason = None
        if not x.is_cuda:
            reason = "CUDA graphs need a CUDA device"
        elif options.get("patches"):
            reason = "model patches present"
        elif busy:
            reason = "reference inputs present"
        elif torch.cuda.is_current_stream_capturing():
            reason = "already capturing"
        if reason is not None:
            runtime.stats.fallback(reason)
            return executor(x, timesteps, context, num_tokens, attention_mask, **kwargs)
        names = list(extra_tensors)
        tensors = [x, timesteps, context] + ([attention_mask] if attention_mask is not None else []) + \
            [extra_tensors[n] for n in names]
        signature = weights_signature(executor.class_obj, x.device)
        if signature is None:
            runtime.stats.fallback("CUDA graphs need every weight resident on the GPU")
            return executor(x, timesteps, context, num_tokens, attention_mask, **kwargs)
        plain = {k: v for k, v in kwargs.items() if k not in extra_tensors and k != "transformer_options"}
        key = (tuple((tuple(t.shape), str(t.dtype)) for t in tensors), num_tokens, attention_mask is not None,
               tuple(names), repr(sorted(plain.items(), key=lambda kv: kv[0])), repr(options.get("rope_options")),
               signature, runtime.fp8.generation)

        def run(*ts):
            x_, t_, c_ = ts[:3]
            rest = list(ts[3:])
            mask = rest.pop(0) if attention_mask is not None else None
            extra = dict(zip(names, rest))
            return executor(x_, t_, c_, num_tokens, mask, **{**kwargs, **extra})

        out, captured = runtime.graphs.run(key, run, *tensors)
        if captured:
            runtime.stats.graphs_captured += 1
        runtime.stats.graph_replays += 1
        return out

    return wrapper


@torch.no_grad()
def sync_free_res_multistep(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.,
                            noise_sampler=None):
    """Drop-in for comfy.k_diffusion.sampling.sample_res_multistep without per-step host syncs."""
    import comfy.k_diffusion.sampling as k_sampling

    extra_args = {} if extra_args is None else extra_args
    seed = extra_args.get("seed", None)
    noise_sampler = k_sampling.default_noise_sampler(x, seed=seed) if noise_sampler is None else noise_sampler
    return core.res_multistep_sync_free(model, x, sigmas, extra_args, callback, s_noise, noise_sampler)


def sampler_wrapper(runtime: Runtime):
    """SAMPLER_SAMPLE wrapper: runs res_multistep (the Turbo default) without host syncs; other samplers as they are."""
    import comfy.k_diffusion.sampling as k_sampling

    def wrapper(executor, *args, **kwargs):
        ksampler = executor.class_obj
        function = getattr(ksampler, "sampler_function", None)
        if function is not k_sampling.sample_res_multistep or getattr(ksampler, "extra_options", None):
            runtime.stats.fallback("sampler without a sync-free version")
            return executor(*args, **kwargs)
        ksampler.sampler_function = sync_free_res_multistep
        try:
            return executor(*args, **kwargs)
        finally:
            ksampler.sampler_function = function

    return wrapper


# --------------------------------------------------------------------------------------------
# patching


def needs_resident_weights(options: core.AccelerateOptions) -> bool:
    """CUDA graphs and FP8 copies need every weight at a fixed GPU address, which DynamicVRAM does not promise."""
    return options.cuda_graphs or options.fp8_matmul


def clone_for(model, options: core.AccelerateOptions, runtime: Runtime):
    """model.clone(), or for a DynamicVRAM MODEL whose options need resident weights, ComfyUI's own
    non-dynamic clone (the checkpoint reloaded for the legacy ModelPatcher, as TorchCompileModel does)."""
    dynamic = getattr(model, "is_dynamic", lambda: False)()
    if not (dynamic and needs_resident_weights(options)):
        return model.clone()
    if getattr(model, "cached_patcher_init", None) is None:
        runtime.stats.fallback("DynamicVRAM model with no loader to reload it resident: CUDA graphs / FP8 skipped")
        return model.clone()
    logging.info("ZImageLabAccelerate: DynamicVRAM model; loading a resident-weights copy for CUDA graphs / FP8.")
    runtime.resident_copy = True
    return model.clone(disable_dynamic=True)


def accelerate_model(model, options: core.AccelerateOptions):
    """A clone of MODEL with the chosen accelerations installed; the given MODEL is untouched."""
    options.validate()
    diffusion_model = model.get_model_object("diffusion_model")
    if not hasattr(diffusion_model, "layers") or not hasattr(diffusion_model, "context_refiner"):
        raise ValueError(f"model is a {type(diffusion_model).__name__}: ZImageLabAccelerate works on Z-Image "
                         "(Lumina 2 NextDiT) models only. Load z_image_turbo_bf16.safetensors with UNETLoader.")
    runtime = Runtime(options)
    patched = clone_for(model, options, runtime)
    model = patched  # blocks below are read from the clone: a resident copy has its own modules
    if options.compile_blocks or options.fp8_matmul:
        for group in BLOCK_GROUPS:
            for i in range(len(getattr(diffusion_model, group))):
                name = f"diffusion_model.{group}.{i}"
                block = model.get_model_object(name)
                if isinstance(block, AcceleratedBlock):
                    block = block.original
                patched.add_object_patch(name, AcceleratedBlock(block, runtime))
    if options.attention != "off":
        patched.model_options["transformer_options"]["optimized_attention_override"] = \
            attention_override(options.attention, runtime)
    if options.cuda_graphs:
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                                     graph_wrapper(runtime))
    if options.sync_free_sampling:
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY,
                                     sampler_wrapper(runtime))
    patched.set_attachments(WRAPPER_KEY, runtime)
    return patched, runtime


def runtime_of(model):
    """The accelerator state (options, stats) of a MODEL patched by this node, or None."""
    return model.get_attachment(WRAPPER_KEY)


# ---- CLIP: cached encodes


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
                final_layer_norm_intermediate=True, dtype=None, position_ids=None, embeds_info=[], past_key_values=None):
        original = self.original
        if self.bf16 and embeds is not None and embeds.dtype == torch.float32:
            embeds, dtype = embeds.to(torch.bfloat16), torch.bfloat16
        if not self._graphable(x, embeds, position_ids, embeds_info, past_key_values, intermediate_output):
            return original(x, attention_mask, embeds=embeds, num_tokens=num_tokens,
                            intermediate_output=intermediate_output,
                            final_layer_norm_intermediate=final_layer_norm_intermediate, dtype=dtype,
                            position_ids=position_ids, embeds_info=embeds_info, past_key_values=past_key_values)
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


TEXT_ENCODER_GRAPH = ("off", "on", "on + TF32", "on + bf16")


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


# ---- VAE: channels-last and compiled decode


class AcceleratedDecoder:
    """Stands in for VAE.first_stage_model: decode() in channels-last and/or compiled; all else delegated."""

    def __init__(self, model, channels_last: bool, compiled: bool, cudnn_benchmark: bool = False):
        self._model = model
        self._channels_last = channels_last
        self._cudnn_benchmark = cudnn_benchmark
        self._decode = torch.compile(model.decode, dynamic=False) if compiled else model.decode

    def __getattr__(self, name):
        return getattr(self._model, name)

    def decode(self, z, **kwargs):
        if self._channels_last and z.ndim == 4:
            z = z.contiguous(memory_format=torch.channels_last)
        if not self._cudnn_benchmark:
            return self._decode(z, **kwargs)
        previous = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            return self._decode(z, **kwargs)
        finally:
            torch.backends.cudnn.benchmark = previous


def _fast_output_applies(vae, samples) -> bool:
    """Whether VAE.decode's plain path (whole batches, images out) is the one this latent takes."""
    return (getattr(vae, "latent_dim", None) == 2 and samples.ndim == 4
            and not getattr(vae.first_stage_model, "comfy_has_chunked_io", False))


def fast_output_decode(vae, samples_in: torch.Tensor, vae_options: dict = {}) -> torch.Tensor:
    """VAE.decode with the image finished on the decoder's device and copied to the CPU once.

    ComfyUI copies each decoded batch to a new CPU tensor, copies that into the output and then
    scales it to [0, 1] there; here the same float32 operations (vae.process_output) run on the GPU
    and the result goes to page-locked memory in one transfer, so the pixels are bit-identical.
    Anything else (video latents, chunked decoders, out of memory) takes ComfyUI's own decode.
    """
    import comfy.model_management as mm

    stock = type(vae).decode
    if not _fast_output_applies(vae, samples_in):
        return stock(vae, samples_in, vae_options)
    vae.throw_exception_if_invalid()
    try:
        memory_used = vae.memory_used_decode(samples_in.shape, vae.vae_dtype)
        mm.load_models_gpu([vae.patcher], memory_required=memory_used, force_full_load=vae.disable_offload)
        batch_number = max(1, int(vae.patcher.get_free_memory(vae.device) / memory_used))
        pixels = None
        for x in range(0, samples_in.shape[0], batch_number):
            samples = samples_in[x:x + batch_number].to(device=vae.device, dtype=vae.vae_dtype)
            out = vae.first_stage_model.decode(samples, **vae_options).to(dtype=vae.vae_output_dtype(), copy=True)
            vae.process_output(out)
            if pixels is None:
                pin = out.is_cuda and torch.device(vae.output_device).type == "cpu"
                pixels = torch.empty((samples_in.shape[0],) + tuple(out.shape[1:]), dtype=out.dtype,
                                     device=vae.output_device, pin_memory=pin)
            pixels[x:x + batch_number].copy_(out, non_blocking=pixels.is_pinned())
            del out
        if pixels.is_pinned():
            torch.cuda.current_stream(vae.device).synchronize()
    except Exception as e:
        mm.raise_non_oom(e)
        logging.warning("ZImageLabAccelerate: out of memory in the fast VAE output path; using ComfyUI's decode.")
        return stock(vae, samples_in, vae_options)
    return pixels.movedim(1, -1)


def accelerate_vae(vae, channels_last: bool, compiled: bool, cudnn_benchmark: bool = False,
                   fast_output: bool = False):
    """A copy of VAE (sharing its weights and patcher): decoder channels-last and/or compiled, image finished on the GPU."""
    patched = copy.copy(vae)
    model = vae.first_stage_model
    if isinstance(model, AcceleratedDecoder):
        model = model._model
    if channels_last or compiled or cudnn_benchmark:
        patched.first_stage_model = AcceleratedDecoder(model, channels_last, compiled, cudnn_benchmark)
    else:
        patched.first_stage_model = model
    patched.__dict__.pop("decode", None)
    if fast_output:
        patched.decode = lambda samples_in, vae_options={}: fast_output_decode(patched, samples_in, vae_options)
    return patched


# --------------------------------------------------------------------------------------------
# node


def describe(options: core.AccelerateOptions, clip_done: str, vae_done: str) -> str:
    """One-line summary for the node's UI."""
    on = [name for name, value in options.to_dict().items() if value not in (False, "off")]
    text = "accelerations: " + (", ".join(f"{n}={options.to_dict()[n]}" if n == "attention" else n for n in on)
                                if on else "none (MODEL unchanged)")
    if clip_done:
        text += f"; CLIP encode {clip_done}"
    if vae_done:
        text += f"; VAE decode {vae_done}"
    return text


class ZImageAccelerate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabAccelerate",
            display_name="Z-Image Accelerate",
            category=f"{CATEGORY}/speed",
            description=(
                "Makes Z-Image inference faster on NVIDIA GPUs without changing the maths: the fastest SDPA "
                "attention kernel (measured), regional torch.compile of the transformer blocks with fused norms, "
                "gates and real-valued RoPE at fixed shapes, optional CUDA-graph replay and opt-in FP8 matrix "
                "multiplies on Hopper; a process-wide cache of text encodes for the CLIP; channels-last / compiled "
                "decode for the VAE. Everything is off by default and each option works alone; with all off the "
                "outputs are the given objects' outputs, bit for bit. Works on clones: the inputs are untouched."
            ),
            search_aliases=["speed", "fast", "torch.compile", "fp8", "cuda graph", "cudnn attention", "cache"],
            inputs=[
                io.Model.Input("model", tooltip="The Z-Image diffusion model to accelerate (a clone is patched)."),
                io.Combo.Input("attention", options=list(core.ATTENTION_CHOICES), default="off",
                               tooltip="Attention kernel. off = ComfyUI's own; auto = time PyTorch's SDPA backends "
                                       "(cuDNN, flash, memory-efficient) on the real shapes once and keep the fastest; "
                                       "or force one backend."),
                io.Boolean.Input("compile_blocks", default=False,
                                 tooltip="Regional torch.compile of every transformer block (fixed shapes, no "
                                         "autotuning): fuses RMSNorms, adaLN scales, tanh gates, residuals and "
                                         "real-valued RoPE around the matrix multiplies. The first run of each image "
                                         "size compiles (tens of seconds); later runs are faster."),
                io.Boolean.Input("cuda_graphs", default=False,
                                 tooltip="Replay each forward of a given size from a CUDA graph (no per-kernel launch "
                                         "cost). Uses extra GPU memory per image size; skipped with model patches "
                                         "such as steering or LoRA hooks on the blocks."),
                io.Boolean.Input("fp8_matmul", default=False,
                                 tooltip="Opt-in: run the block matrix multiplies in FP8 e4m3 with per-row scales "
                                         "(Hopper/Blackwell GPUs). Faster but NOT exact: outputs differ from bf16 "
                                         "beyond rounding. Keeps an FP8 copy of the weights (about 6 GB)."),
                io.Boolean.Input("sync_free_sampling", default=False,
                                 tooltip="Run res_multistep (the Turbo default sampler) without waiting for the GPU "
                                         "at every step (ComfyUI's loop reads two GPU values per step); the same "
                                         "operations in the same order, so bit-identical latents. Other samplers run "
                                         "as they are (euler has no such waits)."),
                io.Boolean.Input("cache_text_encodes", default=False,
                                 tooltip="CLIP: encode each distinct prompt (with the same template, layer and "
                                         "encoder weights) once per server process; repeats return the cached "
                                         "conditioning. Needs the clip input."),
                io.Combo.Input("graph_text_encoder", options=list(TEXT_ENCODER_GRAPH), default="off",
                               tooltip="CLIP: replay the Qwen3 forward from a CUDA graph (prompts padded at the end "
                                       "to a multiple of 32 tokens; causal attention keeps the real tokens' states), "
                                       "removing the Python and launch overhead of a first encode. 'on + TF32' also "
                                       "runs its float32 matrix multiplies on TF32 tensor cores (faster, ~1e-3 "
                                       "relative rounding). 'on + bf16' runs the encoder in bfloat16, the dtype of "
                                       "the Qwen3-4B checkpoint and of transformers' bf16 pipelines, instead of "
                                       "ComfyUI's float32 activations (fastest; bf16 rounding, measured in "
                                       "docs/performance.md). Needs the clip input; the graph is skipped with "
                                       "DynamicVRAM weight streaming."),
                io.Boolean.Input("vae_channels_last", default=False,
                                 tooltip="VAE: decode in channels-last memory layout (faster convolutions on "
                                         "NVIDIA tensor cores). Needs the vae input."),
                io.Boolean.Input("vae_compile", default=False,
                                 tooltip="VAE: torch.compile the decoder at fixed latent sizes (first decode of each "
                                         "size compiles). Needs the vae input."),
                io.Boolean.Input("vae_fast_output", default=False, optional=True,
                                 tooltip="VAE: finish the decoded image on the GPU (ComfyUI's scaling to [0, 1], the "
                                         "same float32 operations) and copy it to the CPU once, into page-locked "
                                         "memory, instead of two CPU copies and CPU scaling. Bit-identical pixels. "
                                         "Needs the vae input."),
                io.Clip.Input("clip", optional=True, tooltip="Optional CLIP (qwen_3_4b) to give cached encodes."),
                io.Vae.Input("vae", optional=True, tooltip="Optional VAE (ae.safetensors) to give a faster decode."),
            ],
            outputs=[
                io.Model.Output("MODEL", tooltip="The accelerated clone of the model."),
                io.Clip.Output("CLIP", tooltip="The CLIP with cached encodes (the given CLIP if the option is off; "
                                               "empty if no clip was connected)."),
                io.Vae.Output("VAE", tooltip="The VAE with the faster decode (the given VAE if its options are off; "
                                             "empty if no vae was connected)."),
                io.String.Output("info", tooltip="JSON record of the options applied."),
            ],
        )

    @classmethod
    def execute(cls, model, attention, compile_blocks, cuda_graphs, fp8_matmul, sync_free_sampling,
                cache_text_encodes, graph_text_encoder, vae_channels_last, vae_compile, vae_fast_output=False,
                clip=None, vae=None) -> io.NodeOutput:
        options = core.AccelerateOptions(attention=attention, compile_blocks=compile_blocks, cuda_graphs=cuda_graphs,
                                         fp8_matmul=fp8_matmul, sync_free_sampling=sync_free_sampling)
        options.validate()
        if (cache_text_encodes or graph_text_encoder != "off") and clip is None:
            raise ValueError("a CLIP option (cache_text_encodes / graph_text_encoder) is on but no clip is connected: "
                             "connect the CLIP to the clip input.")
        if (vae_channels_last or vae_compile or vae_fast_output) and vae is None:
            raise ValueError("a VAE option is on but no vae is connected: connect the VAE to the vae input.")
        runtime = None
        if options.any:
            out_model, runtime = accelerate_model(model, options)
        else:
            out_model = model
        clip_on = cache_text_encodes or graph_text_encoder != "off"
        out_clip = accelerate_clip(clip, cache_text_encodes, graph_text_encoder) if clip_on else clip
        vae_done = " + ".join(n for n, on in (("channels-last", vae_channels_last), ("compiled", vae_compile),
                                               ("GPU output", vae_fast_output)) if on)
        out_vae = accelerate_vae(vae, vae_channels_last, vae_compile, fast_output=vae_fast_output) if vae_done else vae
        record = {"node": "ZImageLabAccelerate", **options.to_dict(), "cache_text_encodes": cache_text_encodes,
                  "graph_text_encoder": graph_text_encoder, "vae_channels_last": vae_channels_last,
                  "vae_compile": vae_compile, "vae_fast_output": vae_fast_output}
        clip_done = " + ".join(n for n, on in (("cached", cache_text_encodes),
                                                (f"CUDA graph ({graph_text_encoder})", graph_text_encoder != "off")) if on)
        text = describe(options, clip_done, vae_done)
        if runtime is not None and runtime.resident_copy:
            text += "; DynamicVRAM model reloaded with resident weights (needed by CUDA graphs / FP8)"
        elif runtime is not None and runtime.stats.fallback_reasons:
            text += "; skipped: " + "; ".join(runtime.stats.fallback_reasons)
        logging.info("ZImageLabAccelerate: %s", text)
        return io.NodeOutput(out_model, out_clip, out_vae, json.dumps(record, indent=1), ui={"text": [text]})


NODES = [ZImageAccelerate]


def on_load():
    """GET /zimage_lab/accelerate/encode_cache (entries, hits, misses) and POST .../clear."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:  # not inside a ComfyUI server
        return
    routes = PromptServer.instance.routes

    @routes.get("/zimage_lab/accelerate/encode_cache")
    async def encode_cache_stats(request):
        return web.json_response(core.ENCODE_CACHE.stats())

    @routes.post("/zimage_lab/accelerate/encode_cache/clear")
    async def encode_cache_clear(request):
        core.ENCODE_CACHE.clear()
        return web.json_response(core.ENCODE_CACHE.stats())
