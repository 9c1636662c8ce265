"""Benchmark sections on the DiT: GEMM / attention kernels, one forward per variant, sampling paths."""

from __future__ import annotations

import gc
import importlib
import importlib.util
import time

from bench_models import ACCELERATED, ACCELERATED_FP8, FORWARD_VARIANTS
from bench_timing import GpuClocks, diff, events, peak_gb, reset_peak, sync, wall


class DitSections:
    """Mixin of Bench: needs BenchBase's models, record and guarded."""

    # ---- micro benchmarks (GPU only)

    def bench_kernels(self):
        """GEMM throughput of the block's matrix shapes (bf16, and FP8 per-row) and SDPA backends."""
        import torch

        if not self.cuda or self.config != "full":
            return
        tokens = 4096 + 128
        dim, hidden = 3840, 10240
        for name, (n, k) in {"qkv": (3 * dim, dim), "out": (dim, dim), "w1/w3": (hidden, dim), "w2": (dim, hidden)}.items():
            a = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
            flop = 2 * tokens * n * k
            ms, _ = events(lambda: torch.nn.functional.linear(a, w), 3, 20)
            self.record(section="gemm", name=f"{name} bf16", shape=f"{tokens}x{k}x{n}", ms=ms, tflops=flop / ms / 1e9)
            fw = self.core.quantize_weight(w)
            ms8, _ = events(lambda: self.core.linear(a, fw), 3, 20)
            self.record(section="gemm", name=f"{name} fp8 rowwise (incl. activation quant)", shape=f"{tokens}x{k}x{n}",
                        ms=ms8, tflops=flop / ms8 / 1e9)
            aq, sa = self.core.quantize_rows(a)
            ms8b, _ = events(lambda: torch._scaled_mm(aq, fw.data.t(), scale_a=sa, scale_b=fw.scale.t(),
                                                       out_dtype=torch.bfloat16, use_fast_accum=True), 3, 20)
            self.record(section="gemm", name=f"{name} fp8 rowwise (matmul only)", shape=f"{tokens}x{k}x{n}",
                        ms=ms8b, tflops=flop / ms8b / 1e9)
        q = torch.randn(1, tokens, 30, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        flop = 4 * tokens * tokens * 128 * 30
        for backend, ms in self.core.time_attention_backends(q, q, q, repeats=10).items():
            self.record(section="attention", name=backend, shape=f"1x30x{tokens}x128", ms=ms, tflops=flop / ms / 1e9)

    # ---- DiT forward

    def bench_forward(self, size: int, batch: int):
        """One DiT forward per variant: median ms (CUDA events), compile seconds, max diff to stock."""
        import comfy.model_management as mm
        import comfy.patcher_extension
        import torch

        gen = torch.Generator().manual_seed(3)
        x = torch.randn(batch, 16, size // 8, size // 8, generator=gen).to(self.device, self.dtype)
        ctx = self.conditioning(batch)[0][0].to(self.device).repeat(batch, 1, 1)
        ts = [torch.full((batch,), float(t), device=self.device) for t in torch.linspace(0.9, 0.1, 4)]
        reference = None
        for name in self.variants:
            options = FORWARD_VARIANTS[name]
            patcher, runtime = self.patched(options)
            mm.load_models_gpu([patcher])
            transformer_options = comfy.patcher_extension.copy_nested_dicts(patcher.model_options["transformer_options"])
            transformer_options["wrappers"] = patcher.wrappers
            dm = patcher.model.diffusion_model
            state = {"i": 0}

            def forward():
                state["i"] += 1
                with torch.inference_mode():
                    return dm(x, ts[state["i"] % len(ts)], ctx, ctx.shape[1], transformer_options=transformer_options)

            def first():
                sync()
                t0 = time.perf_counter()
                out = forward()
                sync()
                return time.perf_counter() - t0, out

            first_s, _ = self.guarded(f"forward {name} {size} b{batch}", first) or (None, None)
            if first_s is None:
                continue
            forward()
            sync()
            time.sleep(self.c["idle_s"])  # the card cools to its boost clock, as between images of a slow graph
            cold_ms, _ = events(forward, 0, 1)
            with GpuClocks() as clocks:
                ms, _ = events(forward, 1, self.c["forward_repeats"])
            with torch.inference_mode():
                out = dm(x, ts[0], ctx, ctx.shape[1], transformer_options=transformer_options)
            if reference is None:
                reference = out.float()
            self.forward_outputs[name] = out.float().cpu()
            self.forward_inputs = (x, ts[0], ctx)
            row = dict(section="forward", name=name, size=size, batch=batch, ms=ms, ms_per_image=ms / batch,
                       first_call_s=first_s, ms_after_idle=cold_ms, **clocks.summary(), **diff(out, reference))
            if runtime is not None:
                s = runtime.stats
                row.update(compile_s=s.compile_seconds, fast_calls=s.fast_calls, fallbacks=s.fallback_reasons,
                           attention_choice=s.attention, graphs=s.graphs_captured)
            self.record(**row)
            del patcher, runtime
            gc.collect()

    # ---- sampling

    def sample_stock(self, latent, positive, negative, seed):
        import nodes as comfy_nodes
        from comfy_extras.nodes_model_advanced import ModelSamplingAuraFlow

        (model,) = ModelSamplingAuraFlow().patch_aura(self.dit, 3.0)
        (out,) = comfy_nodes.common_ksampler(model, seed, self.c["steps"], 1.0, "res_multistep", "simple",
                                             positive, negative, latent)
        return out["samples"]

    def sample_ours(self, model, latent, positive, seed):
        out, _ = self.sampler.sample(model, positive, None, latent, seed, self.c["steps"], 3.0, "res_multistep",
                                     "simple", 1.0, 1.0)
        return out["samples"]

    def bench_sampling(self, size: int, batch: int, paths: list[str], repeats: int):
        """Seconds per image of a whole sampling run (8 steps, res_multistep, cfg 1) for each path."""
        import torch

        latent = {"samples": torch.zeros(batch, 16, size // 8, size // 8)}
        positive = self.conditioning(batch)
        negative = importlib.import_module("zimage_lab.nodes._internals.sampling").zero_out(positive)
        reference = None
        for path in paths:
            if path == "stock KSampler":
                fn = lambda: self.sample_stock(latent, positive, negative, 42)  # noqa: E731
                runtime = None
            elif path == "ZImageLabSampler":
                fn = lambda: self.sample_ours(self.dit, latent, positive, 42)  # noqa: E731
                runtime = None
            elif path == "ZImageLabSampler + sync_free_sampling only":
                model, runtime = self.patched({"sync_free_sampling": True}, reuse=True)
                fn = lambda: self.sample_ours(model, latent, positive, 42)  # noqa: E731
            else:
                options = ACCELERATED_FP8 if "fp8" in path else ACCELERATED
                if not self.cuda:
                    options = {k: v for k, v in options.items() if k != "cuda_graphs"}
                model, runtime = self.patched(options, reuse=True)
                fn = lambda: self.sample_ours(model, latent, positive, 42)  # noqa: E731
            reset_peak()
            first = self.guarded(f"sampling {path} {size} b{batch}", wall, fn, 0, 1)
            if first is None:
                continue
            warm_s = first[0]
            clocks = None
            if runtime is None and repeats == 1:
                median_s, times, samples = first  # nothing to compile: the first run is a steady-state run
            else:
                with GpuClocks() as clocks:
                    median_s, times, samples = wall(fn, 0, repeats)
            row = dict(section="sampling", name=path, size=size, batch=batch, s=median_s, s_per_image=median_s / batch,
                       ms_per_forward=median_s * 1e3 / self.c["steps"] / batch, peak_gb=peak_gb(), runs=times,
                       **(clocks.summary() if clocks else {}))
            if reference is None:
                reference = samples
            row.update(diff(samples, reference))
            if runtime is not None:
                row.update(compile_s=runtime.stats.compile_seconds, fallbacks=runtime.stats.fallback_reasons)
            row["first_run_s"] = warm_s
            self.record(**row)
            gc.collect()

