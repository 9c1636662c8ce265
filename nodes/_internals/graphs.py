"""ComfyUI sampling hooks for CUDA-graph replay and sync-free sampling, and the allocator check graphs need.

Mirrors (checked against ComfyUI 0.18.1 and 0.30.2): the ``DIFFUSION_MODEL`` wrapper call of
``comfy/model_base.py`` ``BaseModel._apply_model`` (``executor(x, timesteps, context, num_tokens,
attention_mask, **kwargs)``, ``executor.class_obj`` the diffusion model), the ``SAMPLER_SAMPLE`` wrapper of
``comfy/samplers.py`` ``KSAMPLER.sample`` (``sampler_function``, ``extra_options``), and
``comfy/k_diffusion/sampling.py`` ``sample_res_multistep`` / ``default_noise_sampler``. The allocator is the
one ``cuda_malloc.py`` chose at start (``PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync`` unless
``--disable-cuda-malloc``).
"""

from __future__ import annotations

import weakref

import comfy.patcher_extension
import torch

from ...core import accelerate as core
from .memory import AIMDO_ATTRIBUTES

DIFFUSION_MODEL = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
SAMPLER_SAMPLE = comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE

ASYNC_ALLOCATOR_REASON = (
    "ComfyUI runs PyTorch's cudaMallocAsync allocator (its default), under which memory a CUDA graph allocates "
    "while it is captured has no address yet, and compiled Triton kernels refuse such pointers "
    "(the capture fails and the server aborts). Start ComfyUI with --disable-cuda-malloc to use compile_blocks "
    "and cuda_graphs together.")


def allocator_backend() -> str:
    """'native' or 'cudaMallocAsync' (the CUDA caching allocator in use; 'native' without CUDA)."""
    if not torch.cuda.is_available():
        return "native"
    return torch.cuda.get_allocator_backend()


def graph_conflict(compile_blocks: bool, cuda_graphs: bool, backend: str | None = None) -> str | None:
    """Why compiled blocks cannot be captured into CUDA graphs on this server, or None when they can."""
    backend = allocator_backend() if backend is None else backend
    if compile_blocks and cuda_graphs and backend == "cudaMallocAsync":
        return ASYNC_ALLOCATOR_REASON
    return None


_PARAM_SLOTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
"""Per model, weak references to its modules (with their parameter names): a cached model stays collectable."""


def weights_signature(model: torch.nn.Module, device: torch.device | None = None) -> tuple | None:
    """Addresses of every parameter (a captured graph is only valid while these do not move), or None
    when some weight is not resident on ``device`` (partial loading, DynamicVRAM streaming).

    The (module, name) slots are listed once per model, as weak references: holding the modules themselves kept
    every replaced model's weights on the GPU (a resident copy per re-run of the Accelerate node, measured on an
    H100 under --disable-cuda-malloc). Reading ~600 addresses costs ~0.1 ms.
    """
    slots = _PARAM_SLOTS.get(model)
    modules = None if slots is None else [m() for m in slots[1]]
    if modules is None or any(m is None for m in modules):  # first call, or a submodule was swapped out since
        modules = list(model.modules())
        slots = ([(weakref.ref(m), n) for m in modules for n, _ in m.named_parameters(recurse=False)],
                 [weakref.ref(m) for m in modules])
        _PARAM_SLOTS[model] = slots
    params = [getattr(m(), n) for m, n in slots[0]]
    if device is not None and (any(p.device != device for p in params)
                               or any(hasattr(m, AIMDO_ATTRIBUTES[0]) for m in modules)):
        return None
    return tuple(p.data_ptr() for p in params)


def graph_wrapper(runtime):
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
        elif runtime.graphs.failed:
            reason = "an earlier CUDA graph capture failed: " + runtime.graphs.failed
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


def sampler_wrapper(runtime):
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
