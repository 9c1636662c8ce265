"""Benchmark clocks: synchronised wall time, CUDA events, peak memory, GPU clocks, tensor differences."""

from __future__ import annotations

import statistics
import time

ON_CUDA = {"value": False}
"""Whether the benchmark runs on a CUDA device (set by Bench from ComfyUI's device choice)."""


def sync():
    import torch

    if ON_CUDA["value"]:
        torch.cuda.synchronize()


def wall(fn, warmup: int, repeats: int) -> tuple[float, list, object]:
    """(median seconds, all seconds, last result) of fn() measured with a synchronised host clock."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def events(fn, warmup: int, repeats: int) -> tuple[float, object]:
    """(median milliseconds, last result) of fn() timed with CUDA events (host clock on CPU)."""
    import torch

    result = None
    for _ in range(warmup):
        result = fn()
    if not ON_CUDA["value"]:
        secs, _, result = wall(fn, 0, repeats)
        return secs * 1e3, result
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), result


def peak_gb() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if ON_CUDA["value"] else 0.0


def reset_peak():
    import torch

    if ON_CUDA["value"]:
        torch.cuda.reset_peak_memory_stats()


class GpuClocks:
    """Mean SM clock (MHz), board power (W) and share of samples throttled by the power cap while in the block.

    Samples NVML every 20 ms in a thread (nvidia-ml-py); empty where there is no NVIDIA GPU or no NVML.
    """

    POWER_CAP_REASONS = 0x4 | 0x80  # software power cap, hardware power brake

    def __init__(self):
        self.samples: list[tuple[float, float, bool]] = []
        self.handle = None
        if ON_CUDA["value"]:
            try:
                import pynvml

                pynvml.nvmlInit()
                self.nvml = pynvml
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            except Exception:  # no NVML: timings still run, without clocks
                self.handle = None

    def _sample(self):
        n, h = self.nvml, self.handle
        try:
            reasons = n.nvmlDeviceGetCurrentClocksEventReasons(h)
        except AttributeError:
            reasons = n.nvmlDeviceGetCurrentClocksThrottleReasons(h)
        self.samples.append((n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM), n.nvmlDeviceGetPowerUsage(h) / 1e3,
                             bool(reasons & self.POWER_CAP_REASONS)))

    def __enter__(self):
        import threading

        self.samples, self._stop = [], threading.Event()
        if self.handle is not None:
            def loop():
                while not self._stop.is_set():
                    self._sample()
                    self._stop.wait(0.02)
            self._thread = threading.Thread(target=loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.handle is not None:
            self._thread.join()

    def summary(self) -> dict:
        if not self.samples:
            return {}
        clocks, watts, capped = zip(*self.samples)
        return {"sm_mhz": statistics.mean(clocks), "watts": statistics.mean(watts),
                "power_capped": sum(capped) / len(capped)}


def diff(a, b) -> dict:
    """Max absolute and relative L2 difference of two tensors (as float32)."""
    a, b = a.float().cpu(), b.float().cpu()
    return {"max_abs_diff": float((a - b).abs().max()), "rel_l2_diff": float((a - b).norm() / b.norm().clamp(min=1e-30)),
            "finite": bool(a.isfinite().all())}

