"""Field benchmark: a real ComfyUI server started as users start it, the shipped workflows over HTTP.

For each ComfyUI install (``--comfyui A,B`` with ``--python PA,PB``: e.g. 0.18.1 and 0.30.2) and each configuration
(``main.py`` defaults, ``--disable-cuda-malloc``, ``--disable-dynamic-vram``, a memory cap through ``--reserve-vram``)
it starts ComfyUI from its work tree with this pack in ``custom_nodes/`` and the checkpoints in ``models/``
(full-size random ones in the official formats, see bench/checkpoints.py, read by the stock UNETLoader /
CLIPLoader / VAELoader), with ``PYTHONFAULTHANDLER=1`` (a native crash leaves its Python stack in the log), then

1. times the stock graph (UNETLoader -> ModelSamplingAuraFlow -> KSampler), ``zimage_turbo_lab``,
   ``zimage_turbo_accelerated`` and the accelerated one with FP8 in alternating blocks, a new seed per prompt
   (plus, under ``--fp8-configs``, the stock and lab graphs on fp8 weights and on a scaled-fp8 checkpoint):
   server-side execution time (the history's execution_start / execution_success) and per node (the
   websocket's ``executing`` messages);
2. checks that the stock graph and ``zimage_turbo_lab`` give pixel-identical images for the same seed;
3. runs every shipped API workflow once (the trainer's LoRA feeding ``zimage_refiner_lora``) and checks the server
   is still alive after each.

It prints a table and writes JSON after every prompt, so a run cut short keeps what it measured. ``--gpus 0,1,..``
runs the (install, configuration) jobs in parallel, one GPU each; ``--budget-s`` stops every job cleanly before
a time limit (a call limit of the GPU machine); ``--resume`` skips the jobs a previous --out finished.

    COMFYUI_PATH=~/comfy/ComfyUI python bench/e2e.py --models MODELS --out field.json
    python bench/e2e.py --tiny --configs defaults      (CPU, the tests' tiny models: what tests run)
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from zlab.api import ComfyClient  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from field_graphs import FP8_VARIANTS, TINY_SCALED_FP8_FILE, VARIANTS, set_seed, shrink, variants  # noqa: E402
from field_server import Events, Server, gpu_total_gb, make_base, run_prompt, table  # noqa: E402
from field_steps import OutOfTime, identity, timing, workflows  # noqa: E402

CONFIGS = {"defaults": [], "no-cuda-malloc": ["--disable-cuda-malloc"],
           "no-dynamic-vram": ["--disable-dynamic-vram"], "memory-cap": ["--reserve-vram", "{reserve}"]}
STEPS = ("timing", "identity", "workflows")


class Context:
    """One configuration's server, client and websocket, the prompt runner the steps use, and the time budget."""

    def __init__(self, args, name: str, flags: list, run: dict, save):
        self.args, self.name, self.flags, self.run, self.save = args, name, flags, run, save
        self.base = Path(tempfile.mkdtemp(prefix=f"zimage-e2e-{name}-"))
        make_base(args.comfyui, self.base, args.models, args.tiny, args.python)
        if args.tiny:  # the scaled-fp8 rows' file, written the way the quant tests write it
            import harness
            import quant_files

            folder = self.base / "models" / "diffusion_models"
            if not (folder / TINY_SCALED_FP8_FILE).exists():
                quant_files.write_scaled_fp8(folder / harness.TINY_FILES["unet_name"], folder / TINY_SCALED_FP8_FILE,
                                             self.base / "scaled_fp8_reference.safetensors")
        self.crashes = 0
        self.seed = 1000
        self.longest = 0.0
        self.start()

    def start(self):
        self.server = Server(self.args.comfyui, self.base, self.flags, self.args.python, self.args.tiny).start()
        self.client = ComfyClient(self.server.url, timeout=120)
        self.events = Events(self.server.url, self.client.client_id)

    def restart(self):
        self.crashes += 1
        self.events.close()
        self.server.stop()
        self.start()

    def check_time(self):
        """OutOfTime unless the longest prompt so far plus the stop margin still fits the budget."""
        if self.args.deadline is None:
            return
        left = self.args.deadline - time.time()
        if left < self.longest * 1.2 + self.args.stop_margin_s:
            raise OutOfTime(f"{left:.0f} s left of the time budget, the longest prompt took {self.longest:.0f} s")

    def prompt(self, api: dict, seed: int | None = 0) -> dict:
        self.check_time()
        if seed == 0:
            self.seed += 1
            seed = self.seed
        api = shrink(set_seed(api, seed) if seed is not None else api, self.args.tiny)
        record = run_prompt(self.client, self.events, api, self.args.prompt_timeout)
        self.longest = max(self.longest, record.get("wall_s") or 0.0)
        if not record["ok"] and "cannot reach" in str(record["error"]):
            deadline = time.monotonic() + 120  # a crashed server can take a while to exit (pinned memory)
            while self.server.alive() and time.monotonic() < deadline:
                time.sleep(1)
            if self.server.alive():
                self.server.process.kill()  # not answering: counts as a crash too
        if not self.server.alive():
            record["ok"], record["server_died"] = False, True
            record["error"] = f"server died (code {self.server.process.returncode}): {self.server.log()[-3000:]}"
            self.run.setdefault("crash_logs", []).append(self.server.log()[-6000:])
            self.restart()
        return record

    def system(self) -> dict:
        stats = self.client.get_json("/system_stats")
        version = (self.args.comfyui / "comfyui_version.py").read_text().split('"')[1]
        log = self.server.log()
        allocator = "cudaMallocAsync" if "cudaMallocAsync" in log else "native"
        return {"comfyui": version, "flags": self.flags, "system": stats.get("system", {}),
                "devices": stats.get("devices", []), "allocator_in_log": allocator,
                "dynamic_vram": "DynamicVRAM" in log or "aimdo" in log.lower(),
                "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def close(self):
        self.events.close()
        self.server.stop()


# --------------------------------------------------------------------------------------------
# one job: an install under one configuration


def flags_for(name: str, cap_gb: float) -> list:
    total = gpu_total_gb()
    reserve = max(0.0, (total or cap_gb) - cap_gb)
    return [f.format(reserve=f"{reserve:.1f}") for f in CONFIGS[name]]


def comfyui_version(path: Path) -> str:
    return (path / "comfyui_version.py").read_text().split('"')[1]


def graph_names(args, config: str) -> list:
    """The timed variants of this configuration (fp8 weight rows where --fp8-configs says, files permitting)."""
    names = args.variants.split(",")
    if config in args.fp8_configs.split(","):
        names += [v for v in FP8_VARIANTS if args.tiny or "scaled" not in v
                  or (args.models / "diffusion_models" / "z_image_turbo_fp8_scaled.safetensors").exists()]
    return names


def run_job(args, config: str, run: dict, save) -> dict:
    """Every requested step of one configuration on one install; stops cleanly at the time budget."""
    run.update(config=config, comfyui_path=str(args.comfyui), crashes=0, done_steps=[],
               system={"comfyui": comfyui_version(args.comfyui), "flags": []})
    wanted = [s for s in STEPS if s in args.steps.split(",")
              and not (s == "timing" and args.timing_configs and config not in args.timing_configs.split(","))
              and not (s == "workflows" and args.workflow_configs and config not in args.workflow_configs.split(","))]
    ctx = None
    try:
        ctx = Context(args, config, flags_for(config, args.cap_gb), run, save)
        run["system"] = ctx.system()
        have = ctx.client.object_info()
        save_node = args.save_node if args.save_node in have else None
        run["save_node"] = save_node
        names = graph_names(args, config)
        graphs = {k: v for k, v in variants(save_node, have).items() if k in names}
        for step in wanted:
            ctx.check_time()
            if step == "timing":
                timing(ctx, graphs, args.blocks, args.per_block)
            elif step == "identity":
                identity(ctx, graphs)
            else:
                workflows(ctx, args.workflow_names)
            run["done_steps"].append(step)
            save()
    except OutOfTime as e:
        run["stopped"] = f"time budget: {e}"
        print(run["stopped"], flush=True)
    except Exception as e:  # keep what was measured; the report says what broke
        run["error"] = f"{type(e).__name__}: {e}"
        print(run["error"], flush=True)
    finally:
        if ctx is not None:
            run["crashes"] = ctx.crashes + (0 if ctx.server.alive() else 1)
            run["log_tail"] = ctx.server.log()[-4000:]
            ctx.close()
        run["complete"] = run["done_steps"] == wanted and "error" not in run
        save()
    return run


# --------------------------------------------------------------------------------------------
# the matrix: installs x configurations, in sequence or one GPU per job


def installs(args) -> list:
    paths = [Path(p).expanduser().resolve() for p in str(args.comfyui).split(",")]
    pythons = args.python.split(",")
    if len(pythons) == 1:
        pythons *= len(paths)
    if len(pythons) != len(paths):
        sys.exit("--python: give one Python, or one per --comfyui path")
    return list(zip(paths, pythons))


def job_key(path, config: str) -> str:
    return f"{path}|{config}"


def worker_command(argv: list, path: Path, python: str, config: str, out: Path) -> list:
    """This script for one job (later options override the earlier ones of argv)."""
    return [sys.executable, str(Path(__file__).resolve()), *argv, "--comfyui", str(path), "--python", python,
            "--configs", config, "--out", str(out), "--gpus", "", "--worker"]


def parallel(args, argv: list, todo: list, report: dict, write) -> None:
    """Run the jobs as workers, one GPU each (CUDA_VISIBLE_DEVICES); merge their JSON into the report as they go."""
    free, running, parts = list(args.gpus.split(",")), {}, {}
    pending = list(todo)
    while pending or running:
        while pending and free:
            (path, python, config), gpu = pending.pop(0), free.pop(0)
            part = args.out.with_name(f"{args.out.stem}.{comfyui_version(path)}.{config}.json")
            part.unlink(missing_ok=True)
            log = open(part.with_suffix(".log"), "w")
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
            proc = subprocess.Popen(worker_command(argv, path, python, config, part), stdout=log,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
            running[proc] = (gpu, part, log, (path, config))
            parts[(path, config)] = part
            print(f"started {comfyui_version(path)} {config} on GPU {gpu}", flush=True)
        time.sleep(2)
        late = args.deadline is not None and time.time() > args.deadline + args.stop_margin_s
        for proc, (gpu, part, log, job) in list(running.items()):
            if late and proc.poll() is None:
                proc.terminate()  # the worker stops its ComfyUI server (SIGTERM -> SystemExit -> finally)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            if proc.poll() is not None:
                log.close()
                free.append(gpu)
                del running[proc]
                print(f"finished {job[1]} on GPU {gpu} (exit {proc.returncode}); log {part.with_suffix('.log')}",
                      flush=True)
        runs = []
        for path, _, config in todo:
            part = parts.get((path, config))
            if part is not None and part.exists():
                runs += json.loads(part.read_text())["runs"]
        report["runs"] = report["prior"] + runs
        write()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", "~/comfy/ComfyUI"),
                        help="ComfyUI work tree(s), comma-separated (e.g. 0.18.1,0.30.2)")
    parser.add_argument("--python", default=sys.executable, help="Python that runs ComfyUI (one per --comfyui path)")
    parser.add_argument("--models", type=Path, help="folder with diffusion_models/, text_encoders/, vae/ "
                                                    "(bench/checkpoints.py writes them)")
    parser.add_argument("--tiny", action="store_true", help="CPU and the tests' tiny models (tests/testing_pack)")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--steps", default=",".join(STEPS), help="which steps to run per configuration")
    parser.add_argument("--timing-configs", default="", help="configurations that time (default: all)")
    parser.add_argument("--workflow-configs", default="", help="configurations that run the workflows (default: all)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--fp8-configs", default="memory-cap",
                        help="configurations that also time the fp8 / scaled-fp8 weight rows (issue 15)")
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--per-block", type=int, default=2)
    parser.add_argument("--workflows", default="all", help="comma-separated API workflow files, or all")
    parser.add_argument("--cap-gb", type=float, default=14.0, help="GPU memory left to ComfyUI in memory-cap")
    parser.add_argument("--save-node", default="ZImageLabSaveImage",
                        help="save node for the accelerated graphs, where the server has it")
    parser.add_argument("--prompt-timeout", type=float, default=900.0)
    parser.add_argument("--budget-s", type=float, help="stop every job cleanly within this many seconds")
    parser.add_argument("--stop-margin-s", type=float, default=45.0,
                        help="time kept back to stop a server and write the JSON (budget)")
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)  # absolute, handed to workers
    parser.add_argument("--gpus", default="", help="comma-separated GPU indices: one job per GPU in parallel")
    parser.add_argument("--resume", action="store_true", help="keep the complete jobs of an existing --out")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("e2e.json"))
    args = parser.parse_args(argv)
    if not args.tiny and args.models is None:
        parser.error("--models is required (or --tiny)")
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration {', '.join(unknown)}: choose from {', '.join(CONFIGS)}")
    if args.deadline is None and args.budget_s:
        args.deadline = time.time() + args.budget_s
    names = sorted(p.name for p in (REPO / "workflows" / "api").glob("*.json"))
    args.workflow_names = names if args.workflows == "all" else args.workflows.split(",")
    return args


def writer(path: Path, report: dict):
    """Write the report (atomically: a reader never sees half a file)."""
    def write():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({k: v for k, v in report.items() if k != "prior"}, indent=1))
        os.replace(tmp, path)
    return write


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    faulthandler.enable()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on the way out (run_job's finally)
    if args.deadline is not None and "--deadline" not in argv:
        argv += ["--deadline", str(args.deadline)]
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": [], "prior": []}
    write = writer(args.out, report)
    done = {}
    if args.resume and args.out.exists() and not args.worker:
        for run in json.loads(args.out.read_text()).get("runs", []):
            if run.get("complete"):
                done[job_key(run["comfyui_path"], run["config"])] = run
    todo = [(path, python, config) for path, python in installs(args) for config in args.configs.split(",")
            if job_key(path, config) not in done]
    report["prior"], report["runs"] = list(done.values()), list(done.values())
    if args.gpus and not args.worker:
        parallel(args, argv, todo, report, write)
    else:
        for path, python, config in todo:
            print(f"== {comfyui_version(path)} {config}", flush=True)
            args.comfyui, args.python = path, python
            run = {}
            report["runs"].append(run)
            run_job(args, config, run, write)
            print(table({"runs": [run]}), flush=True)
    write()
    print(table(report))
    return 0 if all(r["crashes"] == 0 and "error" not in r for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
