"""Benchmark sections around the DiT: text encode, VAE decode, precision and where-the-time-goes diagnostics."""

from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path

from bench_models import ACCELERATED, PROMPT
from bench_timing import diff, events, sync, wall


class PipelineSections:
    """Mixin of Bench: needs BenchBase's models, record and guarded."""

    # ---- text encoder

    def prompt(self, variant: int) -> str:
        """A prompt whose formatted token count is exactly the configured length; variants differ in one digit."""
        tokenizer = self.clip.tokenizer
        words = PROMPT.split()
        target = self.c["tokens"]
        for n in range(len(words), 0, -1):
            text = f"{variant % 10} " + " ".join(words[:n])
            if len(tokenizer.tokenize_with_weights(text)["qwen3_4b"][0]) <= target:
                return text
        return f"{variant % 10}"

    def bench_encode(self):
        """Tokenize + encode through ComfyUI's CLIP: first (new prompt) and cached (same prompt again)."""
        clip = self.clip
        n = self.c["encode_repeats"]
        tokens = len(clip.tokenize(self.prompt(0))["qwen3_4b"][0])
        clip.encode_from_tokens_scheduled(clip.tokenize(self.prompt(0)))  # loads the encoder to the GPU
        variants = [("stock CLIP", clip), ("accelerated CLIP (cache)", self.acc.accelerate_clip(clip))]
        if self.cuda:
            variants.append(("accelerated CLIP (cache + CUDA graph)", self.acc.accelerate_clip(clip, True, "on")))
            variants.append(("accelerated CLIP (cache + CUDA graph + TF32)",
                             self.acc.accelerate_clip(clip, True, "on + TF32")))
            variants.append(("accelerated CLIP (cache + CUDA graph + bf16)",
                             self.acc.accelerate_clip(clip, True, "on + bf16")))
        reference = None
        for label, the_clip in variants:
            self.core.ENCODE_CACHE.clear()
            tok, enc = [], []
            for i in range(n):
                text = self.prompt(i + 1 + (100 if the_clip is not clip else 0))
                sync()
                t0 = time.perf_counter()
                toks = the_clip.tokenize(text)
                t1 = time.perf_counter()
                the_clip.encode_from_tokens_scheduled(toks)
                sync()
                t2 = time.perf_counter()
                tok.append(t1 - t0)
                enc.append(t2 - t1)
            text = self.prompt(1)
            first = the_clip.encode_from_tokens_scheduled(the_clip.tokenize(text))[0][0]
            if reference is None:
                reference = first
            self.record(section="encode", name=f"{label} first", tokens=tokens, ms=1e3 * statistics.median(
                [a + b for a, b in zip(tok, enc)]), tokenize_ms=1e3 * statistics.median(tok),
                encode_ms=1e3 * statistics.median(enc), **diff(first, reference))
            secs, _, out = wall(lambda: the_clip.encode_from_tokens_scheduled(the_clip.tokenize(text)), 1, n)
            self.record(section="encode", name=f"{label} same prompt again", tokens=tokens, ms=secs * 1e3,
                        **diff(out[0][0], reference))

    # ---- VAE

    def bench_decode(self, size: int):
        """VAE decode of one latent (as VAEDecode: to the CPU as float) per VAE option."""
        import torch

        gen = torch.Generator().manual_seed(5)
        latent = torch.randn(1, 16, size // 8, size // 8, generator=gen)
        reference = None
        for label, cl, comp, bench, fast in (
                ("stock", False, False, False, False), ("channels_last", True, False, False, False),
                ("compile", False, True, False, False), ("compile+cudnn.benchmark", False, True, True, False),
                ("channels_last+compile", True, True, False, False), ("fast_output", False, False, False, True),
                ("compile+fast_output", False, True, False, True)):
            if comp and not self.cuda and self.config == "tiny":
                continue
            if label not in self.decode_variants:
                continue
            vae = self.vae if label == "stock" else self.acc.accelerate_vae(self.vae, cl, comp, bench, fast)
            sync()
            t0 = time.perf_counter()
            out = self.guarded(f"decode {label}", vae.decode, latent)
            sync()
            first = time.perf_counter() - t0
            if out is None:
                continue
            secs, _, out = wall(lambda: vae.decode(latent), 1, self.c["decode_repeats"])
            if reference is None:
                reference = out
            gpu = {}
            if self.cuda:
                z = latent.to(self.device, vae.vae_dtype)
                gpu_ms, _ = events(lambda: vae.first_stage_model.decode(z), 1, self.c["decode_repeats"])
                gpu = {"decoder_only_ms": gpu_ms}
            self.record(section="decode", name=label, size=size, ms=secs * 1e3, first_call_s=first, **gpu,
                        **diff(out, reference))

    # ---- diagnostics (where the time goes; GPU only)

    def write_diag(self, name: str, text: str):
        if self.diag_dir:
            self.diag_dir.mkdir(parents=True, exist_ok=True)
            (self.diag_dir / name).write_text(text)

    def bench_precision(self):
        """Each forward variant against a float32 forward of the same weights and inputs."""
        import comfy.model_management as mm
        import torch

        if self.forward_inputs is None:
            return
        x, t, ctx = self.forward_inputs
        mm.load_models_gpu([self.dit])
        dm = self.dit.model.diffusion_model
        with torch.inference_mode(False), torch.no_grad():
            dm.float()  # in place: bf16 -> float32 -> bf16 round-trips exactly
        try:
            ref = dm(x.float(), t, ctx.float(), ctx.shape[1], transformer_options={}).float().cpu()
        finally:
            with torch.inference_mode(False), torch.no_grad():
                dm.to(self.dtype)
            gc.collect()
            torch.cuda.empty_cache()
        for name, out in self.forward_outputs.items():
            d = diff(out, ref)
            self.record(section="precision", name=f"{name} vs float32", max_abs_diff=d["max_abs_diff"],
                        rel_l2_diff=d["rel_l2_diff"], ref_abs_max=float(ref.abs().max()))

    def bench_diagnose(self):
        """Profiles: kernels of one compiled forward, CPU time and host syncs of one sampling run, the encode."""
        import cProfile
        import io
        import pstats
        import warnings

        import torch

        if not self.cuda:
            return
        # 1. kernels of one accelerated forward
        import comfy.model_management as mm
        import comfy.patcher_extension

        patcher, _ = self.patched({"compile_blocks": True, "attention": "auto"}, reuse=True)
        mm.load_models_gpu([patcher])
        x, t, ctx = self.forward_inputs
        to = comfy.patcher_extension.copy_nested_dicts(patcher.model_options["transformer_options"])
        dm = patcher.model.diffusion_model
        with torch.inference_mode():
            dm(x, t, ctx, ctx.shape[1], transformer_options=to)
            sync()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                dm(x, t, ctx, ctx.shape[1], transformer_options=to)
                sync()
        self.write_diag("kernels_forward.txt", prof.key_averages().table(sort_by="cuda_time_total", row_limit=45,
                                                                          max_name_column_width=110))
        # 2. one accelerated sampling run: CPU profile and the places that wait for the GPU
        model, _ = self.patched(ACCELERATED, reuse=True)
        latent = {"samples": torch.zeros(1, 16, self.c["sizes"][0] // 8, self.c["sizes"][0] // 8)}
        positive = self.conditioning(1)
        self.sample_ours(model, latent, positive, 1)
        syncs = {}

        def on_warning(message, category, filename, lineno, file=None, line=None):
            import traceback as tb

            frames = [f for f in tb.extract_stack()[:-1] if "/torch/" not in f.filename and "warnings" not in f.filename]
            where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in frames[-4:][::-1])
            syncs[where] = syncs.get(where, 0) + 1

        old = warnings.showwarning
        warnings.showwarning = on_warning
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.showwarning = on_warning
                self.sample_ours(model, latent, positive, 1)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = old
        self.write_diag("syncs_sampling.txt", "\n".join(f"{n:4d}  {w}" for w, n in sorted(syncs.items(), key=lambda kv: -kv[1])))
        profiler = cProfile.Profile()
        profiler.enable()
        self.sample_ours(model, latent, positive, 1)
        sync()
        profiler.disable()
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(40)
        self.write_diag("cpu_sampling.txt", buf.getvalue())
        # 3. the text encode: CPU profile, GPU time, and with TF32 matmuls
        clip = self.clip
        text = self.prompt(5)
        tokens = clip.tokenize(text)
        reference = clip.encode_from_tokens_scheduled(tokens)[0][0]
        profiler = cProfile.Profile()
        profiler.enable()
        clip.encode_from_tokens_scheduled(clip.tokenize(self.prompt(6)))
        sync()
        profiler.disable()
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(30)
        self.write_diag("cpu_encode.txt", buf.getvalue())
        gpu_ms, _ = events(lambda: clip.encode_from_tokens_scheduled(tokens), 1, 5)
        self.record(section="encode", name="stock encode (CUDA events)", ms=gpu_ms)
        old_tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            secs, _, out = wall(lambda: clip.encode_from_tokens_scheduled(tokens), 1, 5)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old_tf32
        self.record(section="encode", name="stock encode with TF32 matmuls", ms=secs * 1e3, **diff(out[0][0], reference))

