"""The accelerator's runtime pieces: statistics, first-call timing, CUDA-graph replay, fixed-shape padding, the
sync-free res_multistep loop and the process-wide text-encode cache. Plain torch; re-exported by core.accelerate."""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

@dataclass
class AccelerateStats:
    """What an accelerated model did: compile seconds (first call per shape), calls, fallbacks, choices."""

    compile_seconds: float = 0.0
    compiled_shapes: list = field(default_factory=list)
    fast_calls: int = 0
    fallback_calls: int = 0
    fallback_reasons: dict = field(default_factory=dict)
    attention: dict = field(default_factory=dict)
    graphs_captured: int = 0
    graph_replays: int = 0

    def fallback(self, reason: str) -> None:
        self.fallback_calls += 1
        self.fallback_reasons[reason] = self.fallback_reasons.get(reason, 0) + 1

    def to_dict(self) -> dict:
        return asdict(self)


class ShapeTimer:
    """Times the first call of each new input shape (compilation happens there), syncing only then."""

    def __init__(self, stats: AccelerateStats):
        self.stats = stats
        self.seen: set = set()

    @contextlib.contextmanager
    def first_call(self, key):
        if key in self.seen:
            yield
            return
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        start = time.perf_counter()
        yield
        sync()
        self.seen.add(key)
        self.stats.compile_seconds += time.perf_counter() - start
        self.stats.compiled_shapes.append(str(key))


# --------------------------------------------------------------------------------------------
# CUDA graphs


FAILED_CAPTURES: list = []
"""Everything a failed CUDA-graph capture allocated, never freed (see GraphRunner._capture)."""


class GraphRunner:
    """Captures fn(*tensors) once per key into a CUDA graph and replays it with new input values.

    The caller chooses a key that covers everything the captured work depends on besides the
    tensor values (shapes, Python settings, weight addresses). Keeps the newest ``max_graphs``.
    """

    def __init__(self, max_graphs: int = 4, warmup: int = 2):
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._graphs: OrderedDict = OrderedDict()
        self.failed: str | None = None

    def clear(self) -> None:
        self._graphs.clear()

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, key, fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """fn(*inputs) through the graph of this key; returns (output clone, whether it was captured now)."""
        entry = self._graphs.get(key)
        captured = False
        if entry is None:
            entry = self._capture(fn, inputs)
            self._graphs[key] = entry
            captured = True
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        graph, static_in, static_out = entry
        for dst, src in zip(static_in, inputs):
            if dst is not None:
                dst.copy_(src)
        graph.replay()
        return _clone_outputs(static_out), captured

    def _capture(self, fn, inputs):
        static_in = [t.clone() if t is not None else None for t in inputs]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                fn(*static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_out = fn(*static_in)
        except Exception as error:
            # What the failed capture allocated must not be freed outside it (under cudaMallocAsync that
            # free aborts the process, measured on an H200): keep the graph, its inputs and the frames that
            # hold its tensors for the life of the process.
            FAILED_CAPTURES.append((graph, static_in, error, error.__traceback__))
            self.failed = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            raise GraphCaptureError(f"CUDA graph capture failed ({self.failed}); this runner replays no graphs "
                                    "from now on (later calls run without CUDA graphs).") from None
        return graph, static_in, static_out


class GraphCaptureError(RuntimeError):
    """A CUDA graph capture failed; the prompt stops with this message and later calls run eagerly."""


def _clone_outputs(out):
    """Fresh copies of a captured graph's outputs (a tensor, or a tuple / list holding tensors and None)."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_clone_outputs(o) for o in out)
    return out


def pad_tokens(embeds: torch.Tensor, mask: torch.Tensor | None, multiple: int) -> tuple:
    """Pad a causal text encoder's input at the end to a multiple of tokens (fixed shapes for CUDA graphs).

    With causal attention (and the padding masked out) a real token never sees a pad, so its
    hidden states are those of the unpadded input; callers slice the output back to the real length.
    """
    length = embeds.shape[1]
    extra = (-length) % multiple
    if extra == 0:
        return embeds, mask
    embeds = torch.cat([embeds, embeds.new_zeros(embeds.shape[0], extra, *embeds.shape[2:])], dim=1)
    if mask is not None:
        mask = torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], dim=1)
    return embeds, mask


# --------------------------------------------------------------------------------------------
# sampling without host syncs


def res_multistep_sync_free(model, x, sigmas, extra_args: dict, callback, s_noise: float, noise_sampler):
    """ComfyUI's res_multistep (eta 0, no CFG++) with its per-step branches decided on the host.

    ComfyUI's loop tests ``sigma_down == 0`` and ``sigmas[i + 1] > 0`` on GPU tensors, which makes
    the CPU wait for every step to finish before it may queue the next one (the GPU then idles
    while Python prepares it). Here the sigmas are read to the host once, before the loop, and
    every tensor operation is the same one in the same order, so the result is bit-identical.
    """
    levels = sigmas.tolist()
    s_in = x.new_ones([x.shape[0]])

    def sigma_fn(t):
        return t.neg().exp()

    def t_fn(sigma):
        return sigma.log().neg()

    def phi1_fn(t):
        return torch.expm1(t) / t

    def phi2_fn(t):
        return (phi1_fn(t) - 1.0) / t

    old_sigma_down = None
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = sigmas[i + 1], 0.0
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if levels[i + 1] == 0 or old_denoised is None:
            d = (x - denoised) / sigmas[i][(...,) + (None,) * (x.ndim - sigmas[i].ndim)]
            dt = sigma_down - sigmas[i]
            x = x + d * dt
        else:
            t, t_old, t_next, t_prev = t_fn(sigmas[i]), t_fn(old_sigma_down), t_fn(sigma_down), t_fn(sigmas[i - 1])
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1_val, phi2_val = phi1_fn(-h), phi2_fn(-h)
            b1 = torch.nan_to_num(phi1_val - phi2_val / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2_val / c2, nan=0.0)
            x = sigma_fn(h) * x + h * (b1 * denoised + b2 * old_denoised)
        if levels[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised = denoised
        old_sigma_down = sigma_down
    return x


# --------------------------------------------------------------------------------------------
# text-encode cache


class EncodeCache:
    """Process-wide memo of text encodes: one encode per (encoder, prompt, settings) across a sweep.

    Entries belong to an owner object (the encoder's weights holder); they are dropped when the
    owner is garbage-collected (its model unloaded from ComfyUI's cache), on :meth:`clear`, and
    least-recently-used first beyond ``max_entries``. Values are returned as stored: callers treat
    them as read-only (ComfyUI's convention for CONDITIONING).
    """

    def __init__(self, max_entries: int = 512):
        self.max_entries = max_entries
        self._store: OrderedDict = OrderedDict()
        self._owners: dict = {}
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0
        self.by_kind: dict = {}

    def __len__(self) -> int:
        return len(self._store)

    def get_or_compute(self, owner: object, key, compute: Callable[[], Any]):
        """The cached value of (owner, key), computing and storing it on a miss."""
        full_key = (id(owner), key)
        kind = key[0] if isinstance(key, tuple) and key and isinstance(key[0], str) else "other"
        with self._lock:
            counts = self.by_kind.setdefault(kind, {"hits": 0, "misses": 0})
            if full_key in self._store:
                self._store.move_to_end(full_key)
                self.hits += 1
                counts["hits"] += 1
                return self._store[full_key]
        value = compute()
        with self._lock:
            self.misses += 1
            counts["misses"] += 1
            self._track(owner)
            self._store[full_key] = value
            while len(self._store) > self.max_entries:
                self._store.popitem(last=False)
        return value

    def _track(self, owner: object) -> None:
        owner_id = id(owner)
        if owner_id not in self._owners:
            self._owners[owner_id] = weakref.finalize(owner, self.forget, owner_id)

    def forget(self, owner_id: int) -> None:
        """Drop every entry of one owner (called when the owner is garbage-collected)."""
        with self._lock:
            for key in [k for k in self._store if k[0] == owner_id]:
                del self._store[key]
            finalizer = self._owners.pop(owner_id, None)
        if finalizer is not None:
            finalizer.detach()

    def clear(self) -> None:
        """Drop everything (all owners) and reset the counters."""
        with self._lock:
            self.hits = self.misses = 0
            self.by_kind.clear()
            self._store.clear()
            for finalizer in self._owners.values():
                finalizer.detach()
            self._owners.clear()

    def stats(self) -> dict:
        """Entries, hits and misses (in total and per kind of key: tokenize, encode, scheduled, ...)."""
        with self._lock:
            return {"entries": len(self._store), "hits": self.hits, "misses": self.misses,
                    "by_kind": {k: dict(v) for k, v in self.by_kind.items()}}


ENCODE_CACHE = EncodeCache()
"""The one cache a ComfyUI process shares (accelerated CLIPs and any other encoder node may use it)."""


def freeze(value) -> Any:
    """A hashable, exact snapshot of nested token lists / dicts / tensors, for cache keys."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        return ("tensor", str(value.dtype), tuple(value.shape), t.view(torch.uint8).numpy().tobytes())
    if isinstance(value, float):
        return ("float", value.hex())
    if value is None or isinstance(value, (str, int, bool, bytes)):
        return value
    return ("object", id(value))
