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
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_base import BenchBase  # noqa: E402
from bench_dit import DitSections  # noqa: E402
from bench_models import CONFIGS, FORWARD_VARIANTS, setup  # noqa: E402
from bench_pipeline import PipelineSections  # noqa: E402


class Bench(DitSections, PipelineSections, BenchBase):
    """Every section of the in-process benchmark (bench_dit.py, bench_pipeline.py) on BenchBase's driver."""


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
