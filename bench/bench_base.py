"""The benchmark driver: environment record, JSON after every row, models, the section order, the table."""

from __future__ import annotations

import importlib
import importlib.util
import json
import platform
import time
import traceback
from pathlib import Path

from bench_models import CONFIGS, FORWARD_VARIANTS, build_clip, build_dit, build_vae
from bench_timing import ON_CUDA, peak_gb, sync


class BenchBase:
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

