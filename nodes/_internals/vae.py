"""ComfyUI VAE decode internals (``comfy/sd.py`` ``VAE.decode``): channels-last / compiled decoder, image finished
on the GPU.

``fast_output_decode`` mirrors ``VAE.decode``'s plain path (whole batches, 2-D latents) of ComfyUI 0.18.1 and
0.30.2; where the running version wraps the decode in ``comfy.model_management.cuda_device_context`` (0.30.2 and
later) it does the same. A decode whose source uses something this mirror does not know (a newer memory
context, a chunked decoder) runs ComfyUI's own ``VAE.decode``.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging

import torch

KNOWN_DECODE_CONTEXTS = ("cuda_device_context",)
"""``with model_management.<name>(...)`` blocks of VAE.decode that this mirror reproduces."""


def _decode_contexts(decode) -> set[str] | None:
    """Names of ``with model_management.X(...)`` blocks in a VAE.decode's source (None if it cannot be read)."""
    import re

    try:
        source = inspect.getsource(decode)
    except (OSError, TypeError):
        return None
    return set(re.findall(r"with\s+(?:comfy\.)?model_management\.(\w+)\(", source))


def mirror_applies(vae_class) -> bool:
    """Whether fast_output_decode mirrors this VAE class's decode (no unknown memory context in it)."""
    contexts = _decode_contexts(vae_class.decode)
    return contexts is not None and contexts <= set(KNOWN_DECODE_CONTEXTS)


def _device_context(mm, device):
    """``model_management.cuda_device_context(device)`` where the running ComfyUI has it, else nothing."""
    context = getattr(mm, "cuda_device_context", None)
    return context(device) if context is not None else contextlib.nullcontext()


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


def _decode_batches(vae, samples_in, vae_options, mm):
    """The decode loop of VAE.decode, with process_output on the decoder's device and one pinned copy out."""
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
    return pixels


def fast_output_decode(vae, samples_in: torch.Tensor, vae_options: dict = {}) -> torch.Tensor:
    """VAE.decode with the image finished on the decoder's device and copied to the CPU once.

    ComfyUI copies each decoded batch to a new CPU tensor, copies that into the output and then
    scales it to [0, 1] there; here the same float32 operations (vae.process_output) run on the GPU
    and the result goes to page-locked memory in one transfer, so the pixels are bit-identical.
    Anything else (video latents, chunked decoders, out of memory) takes ComfyUI's own decode.
    """
    import comfy.model_management as mm

    stock = type(vae).decode
    if not _fast_output_applies(vae, samples_in) or not mirror_applies(type(vae)):
        return stock(vae, samples_in, vae_options)
    vae.throw_exception_if_invalid()
    with _device_context(mm, vae.device):
        try:
            pixels = _decode_batches(vae, samples_in, vae_options, mm)
        except Exception as e:
            mm.raise_non_oom(e)
            pixels = None
    if pixels is None:
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
