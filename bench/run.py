"""Z-Image Lab benchmark: stock ComfyUI against our sampler with and without ZImageLabAccelerate.

Builds the Z-Image DiT, the Qwen3-4B text encoder and the Flux VAE through ComfyUI's own classes
with random weights (speed does not depend on weight values; nothing is downloaded), then times,
in one process and on one set of weights:

- one DiT forward per variant (CUDA events, warm-up, median) and its max difference to stock;
- sampling with KSampler + ModelSamplingAuraFlow (stock) and with ZImageLabSampler, with and
  without the accelerator, at each size and batch (wall clock, synchronised, median);
- the text encode (first = a new prompt, cached = the same prompt again) and the VAE decode;
- peak GPU memory of each sampling run, and compile time separately from steady-state time.

    python bench/run.py --config full --json bench.json          # on a GPU, full-size models
    python bench/run.py --config tiny --json bench.json          # anywhere, tiny models (CI check)

ComfyUI is found at $COMFYUI_PATH or ~/comfy/ComfyUI. Prints a table last; --json writes every
number (rewritten after each measurement, so a run cut short still leaves its results).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CONFIGS = {
    "full": {"sizes": [1024, 2048], "batches": [1, 4], "steps": 8, "tokens": 108, "forward_repeats": 10,
             "sample_repeats": 3, "encode_repeats": 10, "decode_repeats": 5, "idle_s": 3.0},
    "tiny": {"sizes": [64], "batches": [1, 2], "steps": 2, "tokens": 24, "forward_repeats": 2,
             "sample_repeats": 1, "encode_repeats": 2, "decode_repeats": 1, "idle_s": 0.0},
}

FULL_UNET = {  # comfy/model_detection.py for a Z-Image checkpoint (cap_embedder.1.weight of shape [3840, 2560])
    "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 3840, "cap_feat_dim": 2560, "n_layers": 30,
    "qk_norm": True, "n_heads": 30, "n_kv_heads": 30, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
    "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0,
    "pad_tokens_multiple": 32,
}

PROMPT = ("a photograph of a red fox sitting in fresh snow at dawn, soft golden light from the left, shallow depth of "
          "field, frost on the whiskers, pine trees in the background fading into mist, shot on a medium format "
          "camera with an 80mm lens, natural colours, fine grain, calm mood, the fox looks straight at the viewer "
          "with amber eyes, tiny snowflakes drifting in the air, a quiet winter morning in the northern forest, "
          "high detail fur texture, gentle shadows on the snow, cinematic composition, award winning wildlife photo")

# Forward variants: name -> accelerator options (None = stock model).
FORWARD_VARIANTS = {
    "stock": None,
    "attention=auto": {"attention": "auto"},
    "attention=cudnn": {"attention": "cudnn"},
    "attention=flash": {"attention": "flash"},
    "cuda_graphs": {"cuda_graphs": True},
    "compile": {"compile_blocks": True},
    "compile+attention=auto": {"compile_blocks": True, "attention": "auto"},
    "compile+auto+graphs": {"compile_blocks": True, "attention": "auto", "cuda_graphs": True},
    "compile+auto+fp8": {"compile_blocks": True, "attention": "auto", "fp8_matmul": True},
    "compile+auto+fp8+graphs": {"compile_blocks": True, "attention": "auto", "fp8_matmul": True, "cuda_graphs": True},
    "compile(tuned)+auto+graphs": {"compile_blocks": True, "compile_tuning": True, "attention": "auto",
                                   "cuda_graphs": True},
}
ACCELERATED = {"compile_blocks": True, "attention": "auto", "cuda_graphs": True, "sync_free_sampling": True}
"""The accelerator setting used for the sampling rows (bf16, exact up to rounding)."""
ACCELERATED_FP8 = {**ACCELERATED, "fp8_matmul": True}


# --------------------------------------------------------------------------------------------
# setup


def find_comfyui() -> Path:
    path = Path(os.environ.get("COMFYUI_PATH", "~/comfy/ComfyUI")).expanduser()
    if not (path / "comfy" / "model_management.py").is_file():
        sys.exit(f"ComfyUI not found at {path}: set COMFYUI_PATH to a ComfyUI 0.18.1 work tree.")
    return path


def setup(cpu: bool, dynamic_vram: bool = False):
    """Import ComfyUI in-process (cli args first) and this pack as the package zimage_lab.

    dynamic_vram: turn on ComfyUI's DynamicVRAM weight loading (comfy-aimdo) the way main.py does
    by default on NVIDIA GPUs; otherwise the legacy ModelPatcher keeps the weights resident.
    """
    comfy_path = find_comfyui()
    sys.path.insert(0, str(comfy_path))
    sys.path.insert(0, str(REPO / "tests" / "testing_pack"))
    from comfy.cli_args import args

    args.cpu = cpu
    if dynamic_vram:
        if cpu:
            raise SystemExit("--dynamic-vram needs a CUDA GPU (ComfyUI uses the legacy ModelPatcher on the CPU)")
        import comfy_aimdo.control

        comfy_aimdo.control.init()
        import comfy.memory_management
        import comfy.model_management as mm
        import comfy.model_patcher

        if not comfy_aimdo.control.init_device(mm.get_torch_device().index):
            raise SystemExit("--dynamic-vram: comfy-aimdo could not start on this device")
        comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
        comfy.memory_management.aimdo_enabled = True
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False
    if "zimage_lab" not in sys.modules:
        spec = importlib.util.spec_from_file_location("zimage_lab", REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules["zimage_lab"] = pack
        spec.loader.exec_module(pack)
    return comfy_path


def randomize_(module, seed: int, std: float = 0.02) -> None:
    """Random weights where the module lives (GPU): norms near 1, everything else N(0, std)."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for i, (name, p) in enumerate(sorted(module.named_parameters())):
            g = torch.Generator(device=p.device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            values = torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32)
            if "norm" in name and p.ndim == 1:
                values = 1.0 + 0.1 * values
            elif "pad_token" in name:
                pass
            else:
                values = values * std
            p.copy_(values.to(p.dtype))


def build_dit(config: str, device, dtype, disable_dynamic: bool = False):
    """A ModelPatcher around a random Z-Image NextDiT (full size or the tests' tiny one), the same weights every call.

    Like UNETLoader's result it can rebuild itself (cached_patcher_init), which ComfyUI uses for
    clone(disable_dynamic=True): the resident-weights copy of a DynamicVRAM model.
    """
    import comfy.model_patcher
    import comfy.supported_models
    import tiny_models

    unet = FULL_UNET if config == "full" else tiny_models.UNET_CONFIG
    model_config = comfy.supported_models.ZImage(dict(unet))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, "", device=device)
    model.diffusion_model.to(device=device, dtype=dtype)
    randomize_(model.diffusion_model, 0)
    model.requires_grad_(False)  # as after ComfyUI loads a checkpoint
    import comfy.model_management as mm

    patcher_class = comfy.model_patcher.ModelPatcher if disable_dynamic else comfy.model_patcher.CoreModelPatcher
    if patcher_class is not comfy.model_patcher.ModelPatcher:
        model.to(mm.unet_offload_device())  # as UNETLoader leaves it: weights in RAM, loaded on demand
    patcher = patcher_class(model, load_device=device, offload_device=mm.unet_offload_device())
    patcher.cached_patcher_init = (build_dit, (config, device, dtype))
    return patcher


def build_clip(config: str, device):
    """ComfyUI's Z-Image CLIP (tokenizer + Qwen3-4B, or the tiny Qwen3) with random weights."""
    import tiny_models

    if config == "full":
        import comfy.sd
        import comfy.supported_models_base
        import comfy.text_encoders.z_image

        import torch

        # CLIPLoader keeps the checkpoint's dtype (llama_detect): Qwen3-4B's released weights are bfloat16
        target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.z_image.ZImageTokenizer,
                                                        comfy.text_encoders.z_image.te(dtype_llama=torch.bfloat16))
        clip = comfy.sd.CLIP(target, model_options={"initial_device": device}, disable_dynamic=True)
        randomize_(clip.cond_stage_model, 1)
        clip.cond_stage_model.requires_grad_(False)
        return clip
    return tiny_models.make_clip(tiny_models.QWEN3_CONFIG, tiny_models.build_qwen3())


def build_vae(config: str):
    """ComfyUI VAE: the Flux AE (16-channel KL autoencoder) or the tests' tiny TAESD, random weights."""
    import comfy.sd
    import torch
    import tiny_models

    if config != "full":
        return comfy.sd.VAE(sd=tiny_models.build_taesd())
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    with torch.device("meta"):
        shell = AutoencodingEngine(regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
                                   encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": ddconfig},
                                   decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": ddconfig})
    gen = torch.Generator().manual_seed(2)
    sd = {}
    for name, t in sorted(shell.state_dict().items()):
        if "norm" in name and name.endswith("weight"):
            sd[name] = 1.0 + 0.1 * torch.randn(t.shape, generator=gen)
        else:
            sd[name] = 0.02 * torch.randn(t.shape, generator=gen)
    return comfy.sd.VAE(sd=sd)


# --------------------------------------------------------------------------------------------
# timing


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


# --------------------------------------------------------------------------------------------
# the benchmark


class Bench:
    def __init__(self, config: str, json_path: str | None, variants: list[str] | None, sections: list[str],
                 diag_dir: str | None = None):
        import torch

        self.config = config
        self.c = CONFIGS[config]
        self.json_path = json_path
        self.sections = sections
        import comfy.model_management as mm

        self.device = mm.get_torch_device()
        self.cuda = self.device.type == "cuda"
        ON_CUDA["value"] = self.cuda
        self.dtype = torch.bfloat16 if config == "full" else torch.float32
        self.variants = variants or list(FORWARD_VARIANTS)
        if not self.cuda:
            self.variants = [v for v in self.variants if "graphs" not in v and "cudnn" not in v and "flash" not in v]
        self.rows: list[dict] = []
        self.accelerated: dict = {}
        self.forward_outputs: dict = {}
        self.forward_inputs = None
        self.sampling_paths = None
        self.decode_variants = ("stock", "channels_last", "compile", "compile+cudnn.benchmark", "channels_last+compile",
                                "fast_output", "compile+fast_output")
        self.diag_dir = Path(diag_dir) if diag_dir else None
        self.info = self.environment()
        self.acc = importlib.import_module("zimage_lab.nodes.accelerate")
        self.core = importlib.import_module("zimage_lab.core.accelerate")
        self.sampler = importlib.import_module("zimage_lab.nodes.sampler")

    def environment(self) -> dict:
        import torch

        info = {"date": time.strftime("%Y-%m-%d %H:%M"), "config": self.config, "python": platform.python_version(),
                "torch": torch.__version__, "device": str(self.device)}
        import comfy.model_patcher

        info["model_patcher"] = comfy.model_patcher.CoreModelPatcher.__name__
        if self.cuda:
            props = torch.cuda.get_device_properties(0)
            info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                        cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                        capability=".".join(map(str, torch.cuda.get_device_capability())))
        try:
            import comfyui_version

            info["comfyui"] = comfyui_version.__version__
        except ImportError:
            pass
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
        return info

    def record(self, **row):
        row = {k: (float(f"{v:.5g}") if isinstance(v, float) else v) for k, v in row.items()}
        self.rows.append(row)
        print("  " + json.dumps(row), flush=True)
        self.save()

    def save(self):
        if self.json_path:
            Path(self.json_path).write_text(json.dumps({"environment": self.info, "rows": self.rows}, indent=1))

    def guarded(self, label, fn, *a, **k):
        try:
            return fn(*a, **k)
        except Exception as e:  # one failing variant must not lose the rest of the run
            traceback.print_exc()
            self.record(section="error", name=label, error=f"{type(e).__name__}: {e}"[:500])
            return None

    # ---- models

    def build(self):
        t0 = time.perf_counter()
        self.dit = build_dit(self.config, self.device, self.dtype)
        self.clip = build_clip(self.config, self.device)
        self.vae = build_vae(self.config)
        sync()
        self.info["build_seconds"] = round(time.perf_counter() - t0, 1)
        dm = self.dit.model.diffusion_model
        self.info["dit_parameters"] = sum(p.numel() for p in dm.parameters())
        self.width = dm.cap_embedder[1].weight.shape[1]
        print(f"built models in {self.info['build_seconds']} s; DiT {self.info['dit_parameters']:,} parameters", flush=True)

    def conditioning(self, batch: int):
        """Random caption features [1, tokens, width] (same for every variant) as CONDITIONING."""
        import torch

        gen = torch.Generator().manual_seed(7)
        ctx = torch.randn(1, self.c["tokens"], self.width, generator=gen).to(self.dtype)
        return [[ctx, {}]]

    def patched(self, options: dict | None, reuse: bool = False):
        """The stock model, or an accelerated clone (reused per setting when reuse, as a user keeps one node)."""
        if options is None:
            return self.dit, None
        key = tuple(sorted(options.items()))
        if reuse and key in self.accelerated:
            return self.accelerated[key]
        made = self.acc.accelerate_model(self.dit, self.core.AccelerateOptions(**options))
        if reuse:
            self.accelerated[key] = made
        return made

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

    # ---- driver

    def run(self):
        """Everything under torch.inference_mode, as ComfyUI's executor runs nodes."""
        import torch

        print(json.dumps(self.info), flush=True)
        self.build()
        with torch.inference_mode():
            self._run()

    def _run(self):
        if "kernels" in self.sections:
            self.guarded("kernels", self.bench_kernels)
        first_size = self.c["sizes"][0]
        if "encode" in self.sections:
            self.guarded("encode", self.bench_encode)
        if "decode" in self.sections:
            for size in self.c["sizes"][:1] if self.config == "full" else self.c["sizes"]:
                self.guarded("decode", self.bench_decode, size)
        if "forward" in self.sections:
            self.bench_forward(first_size, 1)
        if "precision" in self.sections:
            self.guarded("precision", self.bench_precision)
        if "diagnose" in self.sections:
            self.guarded("diagnose", self.bench_diagnose)
        if "sampling" in self.sections:
            paths = ["stock KSampler", "ZImageLabSampler", "ZImageLabSampler + accelerate"]
            if self.cuda:
                paths.append("ZImageLabSampler + accelerate + fp8")
            if self.sampling_paths:
                paths = [p for p in paths if p in self.sampling_paths]
            for size in self.c["sizes"]:
                for batch in self.c["batches"]:
                    headline = (size, batch) == (first_size, 1)
                    extra = ["ZImageLabSampler + sync_free_sampling only"] if headline else []
                    if self.sampling_paths:
                        extra = [p for p in extra if p in self.sampling_paths]
                    repeats = self.c["sample_repeats"] if headline else 1
                    self.bench_sampling(size, batch, paths[:2] + extra + paths[2:], repeats)
        self.info["peak_gb_overall"] = round(peak_gb(), 2)
        self.save()
        print_table(self.rows)


def print_table(rows: list[dict]) -> None:
    """The short table: one line per measurement."""
    print("\n| section | name | size | batch | ms | per image | max diff | notes |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        per_image = r.get("s_per_image") or r.get("ms_per_image") or ""
        notes = []
        for key in ("tflops", "ms_per_forward", "peak_gb", "compile_s", "first_call_s", "tokenize_ms", "encode_ms", "error"):
            if key in r:
                notes.append(f"{key}={r[key]}")
        ms = r.get("ms", r.get("s", ""))
        print(f"| {r.get('section')} | {r.get('name')} | {r.get('size', '')} | {r.get('batch', '')} | {ms} | "
              f"{per_image} | {r.get('max_abs_diff', '')} | {' '.join(notes)} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="full")
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--sizes", help="comma-separated image sizes (default: the config's)")
    parser.add_argument("--batches", help="comma-separated batch sizes (default: the config's)")
    parser.add_argument("--variants", help=f"comma-separated forward variants of: {', '.join(FORWARD_VARIANTS)}")
    parser.add_argument("--sections", default="kernels,encode,decode,forward,sampling",
                        help="comma-separated: kernels, encode, decode, forward, precision, diagnose, sampling")
    parser.add_argument("--sampling-paths", help="comma-separated sampling paths (default: all)")
    parser.add_argument("--decode-variants", help="comma-separated VAE decode variants (default: all)")
    parser.add_argument("--diag-dir", help="write profiles (diagnose section) into this folder")
    parser.add_argument("--sample-repeats", type=int, help="timed sampling runs per path (default: the config's)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU exists")
    parser.add_argument("--dynamic-vram", action="store_true",
                        help="the DiT and VAE under ComfyUI's DynamicVRAM loader (its default on NVIDIA GPUs) instead "
                             "of the legacy resident-weights ModelPatcher; the text encoder stays legacy")
    args = parser.parse_args(argv)
    setup(cpu=args.cpu or args.config == "tiny" and not os.environ.get("ZLAB_BENCH_GPU"), dynamic_vram=args.dynamic_vram)
    if args.sizes:
        CONFIGS[args.config]["sizes"] = [int(s) for s in args.sizes.split(",")]
    if args.batches:
        CONFIGS[args.config]["batches"] = [int(b) for b in args.batches.split(",")]
    if args.sample_repeats:
        CONFIGS[args.config]["sample_repeats"] = args.sample_repeats
    variants = args.variants.split(",") if args.variants else None
    for v in variants or []:
        if v not in FORWARD_VARIANTS:
            parser.error(f"unknown variant {v!r}; choose from {', '.join(FORWARD_VARIANTS)}")
    bench = Bench(args.config, args.json, variants, args.sections.split(","), args.diag_dir)
    if args.decode_variants:
        bench.decode_variants = tuple(args.decode_variants.split(","))
    if args.sampling_paths:
        bench.sampling_paths = tuple(args.sampling_paths.split(","))
    bench.run()


if __name__ == "__main__":
    main()
