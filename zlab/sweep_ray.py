"""``zlab sweep SPEC --ray [ADDRESS]``: the cells of a sweep run by Ray actors, one per GPU.

Ray places the actors (``num_gpus=1`` each, so one per GPU of the cluster, on any node), restarts one whose
process or node died (``max_restarts``), and carries every result back to this driver, which alone writes
results.jsonl, the images and the tables (zlab/sweep_outputs.py), exactly as the HTTP mode does. A cell whose
worker died, or whose server stopped answering, is handed to another worker; a worker comes back into
rotation once it answers again. Ray is optional: ``pip install "zimage-lab[ray]"``.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from pathlib import Path

from .sweep_outputs import CellFailures, Recorder, Results
from .server_score import add_scoring, sweep_models
from .sweep_spec import REPO, Cell, Spec, SweepError, build_prompt

PROBE_S = 2.0


def add_arguments(p) -> None:
    """The --ray options of ``zlab sweep``."""
    g = p.add_argument_group("Ray", "run the cells on a Ray cluster (pip install \"zimage-lab[ray]\"); see docs/sweeps.md")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray: the cluster at ADDRESS (e.g. ray://head:10001 or auto), else $RAY_ADDRESS, "
                        "else a new local Ray instance with this machine's GPUs")
    g.add_argument("--workers", type=int, default=None,
                   help="Ray workers (one ComfyUI server and GPU each; default: every GPU of the cluster)")
    g.add_argument("--attach", action="append", default=[], metavar="URL",
                   help="instead of starting servers, one Ray worker per named ComfyUI server URL (repeatable)")
    g.add_argument("--comfyui", help="ComfyUI folder on the Ray nodes (default: $COMFYUI_PATH on each node)")
    g.add_argument("--base-directory", help="ComfyUI --base-directory for the workers' servers (models, custom_nodes)")
    g.add_argument("--server-arg", dest="server_args", action="append", default=[], metavar="ARG",
                   help="extra argument for the workers' ComfyUI servers, e.g. --server-arg=--fast (repeatable)")
    g.add_argument("--scratch", help="folder on each node for the servers' output/temp/user folders (default: the temp folder)")
    g.add_argument("--gpus-per-worker", type=float, default=1.0, help="GPUs per Ray worker (default 1)")
    g.add_argument("--max-restarts", type=int, default=3, help="times Ray restarts a worker that died (default 3)")


def import_ray():
    try:
        import ray
    except ImportError:
        raise SweepError('--ray needs Ray: pip install "zimage-lab[ray]" (or pip install -r requirements-ray.txt)') from None
    return ray


def start_workers(ray, args) -> list:
    """Connect to Ray and create the worker actors; Ray places them (one per GPU) and restarts them."""
    ray.init(address=args.ray or None, runtime_env={"py_modules": [str(REPO / "zlab")]}, log_to_driver=False)
    from .ray_worker import ComfyWorker

    if args.attach:
        specs = [dict(url=url, num_gpus=0) for url in args.attach]
    else:
        gpus = ray.cluster_resources().get("GPU", 0)
        count = args.workers or int(gpus // args.gpus_per_worker)
        if count < 1:
            raise SweepError(f"the Ray cluster has {gpus:g} GPUs: start its nodes with GPUs (ray start --num-gpus N), "
                             "give --workers N, or name running servers with --attach URL")
        specs = [dict(url=None, num_gpus=args.gpus_per_worker)] * count
    actor = ray.remote(ComfyWorker)
    workers = []
    for i, spec in enumerate(specs):
        options = dict(num_gpus=spec["num_gpus"], num_cpus=0, max_restarts=args.max_restarts, max_task_retries=0,
                       max_concurrency=args.per_server + 2)
        workers.append(actor.options(**options).remote(
            f"w{i}", url=spec["url"], comfyui=args.comfyui, base_directory=args.base_directory,
            server_args=args.server_args, scratch=args.scratch, timeout=args.server_timeout))
    return workers


def worker_infos(ray, workers, log, grace: float = 60.0) -> dict[int, dict]:
    """Each started worker's info, once its server answers: waits for the first, then up to ``grace`` seconds
    for the rest; workers Ray cannot place yet (no free GPU) or still starting join the sweep later."""
    refs = {w.info.remote(): i for i, w in enumerate(workers)}
    pending, infos, errors = list(refs), {}, []
    deadline = None
    while pending and (deadline is None or time.monotonic() < deadline):
        ready, pending = ray.wait(pending, num_returns=1, timeout=5.0)
        for ref in ready:
            try:
                infos[refs[ref]] = info = ray.get(ref)
                log(f"worker {info['name']} on node {info['node']}: ComfyUI {info['url']} (pid {info['pid']})")
            except ray.exceptions.RayError as e:
                errors.append(str(e).strip().splitlines()[-1])
        if infos and deadline is None:
            deadline = time.monotonic() + grace
        if not pending and not infos:
            break
    if not infos:
        raise SweepError("no Ray worker could start its ComfyUI server: " + "; ".join(errors))
    for i in sorted(set(range(len(workers))) - set(infos)):
        log(f"worker w{i} is not up yet (waiting for a GPU or its server): it joins when it answers")
    return infos


class Progress:
    """A progress bar (tqdm, on stderr) with cells done, failed, retried and workers alive."""

    def __init__(self, total: int, workers: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="cell", file=sys.stderr, mininterval=0.5, dynamic_ncols=True)
        self.workers = workers

    def update(self, done: int, failed: int, retried: int, alive: int) -> None:
        self.bar.n = done + failed
        self.bar.set_postfix_str(f"done {done}, failed {failed}, retried {retried}, workers {alive}/{self.workers}",
                                 refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class RayRunner:
    """Hands cells to the workers (``per_server`` in flight each) and records each result as it streams back."""

    def __init__(self, ray, spec: Spec, base: dict, workers: list, names: list[str], out_dir: Path,
                 per_server: int = 3, timeout: float = 3600.0, give_up: float = 600.0, up: set[int] | None = None,
                 log=print):
        self.ray, self.spec, self.base, self.workers, self.names = ray, spec, base, workers, names
        self.per_server, self.timeout, self.give_up, self.log = per_server, timeout, give_up, log
        self.results = Results(out_dir)
        self.recorder = Recorder(spec, out_dir, self.results, log)
        self.failures = CellFailures(len(workers))
        self.failed: list[tuple[Cell, str]] = []
        self.up = set(range(len(workers))) if up is None else set(up)
        self.busy = {i: 0 for i in range(len(workers))}
        self.futures: dict = {}  # ObjectRef -> (cell, worker index)
        self.probes: dict = {}  # ObjectRef -> worker index
        self.last_probe: dict[int, float] = {}
        self.finished = self.retried = 0
        self.lost_on: dict[str, int] = {}  # cell id -> the worker it was last taken back from
        self.scoring: dict[str, str] = {}

    def run(self, all_cells: list[Cell]) -> None:
        self.todo = deque(c for c in all_cells if not self.results.done(c))
        self.total = len(self.todo)
        self.log(f"sweep {self.spec.name}: {len(all_cells)} cells, {len(all_cells) - self.total} already done, "
                 f"{self.total} to run on {len(self.workers)} Ray worker(s)")
        if not self.todo:
            return
        self.scoring = self.scoring_models()
        progress = Progress(self.total, len(self.workers))
        all_down_since = None
        try:
            while self.finished + len(self.failed) < self.total:
                self.dispatch()
                self.probe()
                refs = list(self.futures) + list(self.probes)
                ready, _ = self.ray.wait(refs, num_returns=1, timeout=1.0) if refs else ([], time.sleep(0.5))
                for ref in ready:
                    self.collect(ref)
                progress.update(self.finished, len(self.failed), self.retried, len(self.up))
                all_down_since = None if self.up else all_down_since or time.monotonic()
                if all_down_since is not None and time.monotonic() - all_down_since > self.give_up:
                    raise SweepError(f"no Ray worker answered for {self.give_up:.0f} s; "
                                     f"{self.total - self.finished - len(self.failed)} cells did not run. "
                                     "Rerun the same command: finished cells are kept.")
        finally:
            progress.close()

    def scoring_models(self) -> dict[str, str]:
        """metric -> server model for the spec's per-image metrics, asked of a worker in rotation before any cell."""
        i = min(self.up) if self.up else 0
        return sweep_models(self.spec.metrics, lambda: self.ray.get(self.workers[i].object_info.remote()),
                            f"Ray worker {self.names[i]}")

    def dispatch(self) -> None:
        """Give every worker in rotation cells until it has ``per_server`` in flight."""
        for i in sorted(self.up, key=lambda k: self.busy[k]):
            while self.busy[i] < self.per_server:
                cell = self.next_cell(i)
                if cell is None:
                    break
                ref = self.workers[i].run_cell.remote(add_scoring(build_prompt(self.base, self.spec, cell), self.scoring),
                                                      self.timeout)
                self.futures[ref] = (cell, i)
                self.busy[i] += 1

    def next_cell(self, i: int) -> Cell | None:
        """The first waiting cell that has not failed on worker i."""
        for n, cell in enumerate(self.todo):
            if self.lost_on.get(cell.id) == i and len(self.up) > 1:
                continue  # taken back from this worker: another one runs it
            if not self.failures.tried(cell, self.names[i]):
                del self.todo[n]
                return cell
        return None

    def probe(self) -> None:
        """Ask every worker out of rotation, every PROBE_S seconds, whether its server answers again."""
        now = time.monotonic()
        for i in range(len(self.workers)):
            if i not in self.up and i not in self.probes.values() and now - self.last_probe.get(i, 0) > PROBE_S:
                self.last_probe[i] = now
                self.probes[self.workers[i].healthy.remote()] = i

    def collect(self, ref) -> None:
        """One finished call: a probe's answer, or a cell's result, failure or lost worker."""
        if ref in self.probes:
            i = self.probes.pop(ref)
            try:
                back = self.ray.get(ref)
            except self.ray.exceptions.RayError:
                back = False  # still restarting, or gone for good
            if back and i not in self.up:
                self.up.add(i)
                info = self.ray.get(self.workers[i].info.remote())
                self.log(f"worker {self.names[i]} on node {info['node']} is in rotation: ComfyUI {info['url']} "
                         f"(pid {info['pid']})")
            return
        cell, i = self.futures.pop(ref)
        self.busy[i] -= 1
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as e:  # the actor's process or node died; Ray restarts it
            result = {"status": "gone", "error": f"{type(e).__name__}"}
        if result["status"] == "gone":
            self.worker_down(i, cell, result.get("error", ""))
        elif result["status"] == "error":
            self.cell_failed(cell, i, result["error"])
        else:
            self.save(cell, i, result)

    def worker_down(self, i: int, cell: Cell, why: str) -> None:
        """Out of rotation; the cell goes back to the front of the queue for the other workers."""
        if i in self.up:
            self.up.discard(i)
            self.last_probe[i] = time.monotonic()
            self.log(f"worker {self.names[i]} stopped answering ({why}); its cells go to the other workers")
        self.retried += 1
        self.lost_on[cell.id] = i
        self.todo.appendleft(cell)
        self.log(f"cell {cell.id} ({cell.label}) lost on worker {self.names[i]}: running it again elsewhere")

    def cell_failed(self, cell: Cell, i: int, error: str) -> None:
        """A cell failed on one worker: try another, or record it failed after two workers."""
        name = self.names[i]
        if self.failures.add(cell, name, error):
            message = self.failures.message(cell)
            self.failed.append((cell, message))
            self.recorder.fail(cell, name, message)
            self.log(f"cell {cell.label} failed: {message}")
        else:
            self.retried += 1
            self.todo.appendleft(cell)
            self.log(f"cell {cell.label} failed on {name}: {error}; trying it on another worker")

    def save(self, cell: Cell, i: int, result: dict) -> None:
        meta = {"server": result["server"], "prompt_id": result["prompt_id"], "seconds": result["seconds"],
                "wall_seconds": result["wall_seconds"], "queued_at": result["queued_at"], "worker": self.names[i],
                **result.get("scores", {})}
        try:
            row = self.recorder.save(cell, result["files"], meta)
        except Exception as e:  # an unreadable file, a full disk: record it and go on with the others
            self.cell_failed(cell, i, f"{type(e).__name__}: {e}")
            return
        self.finished += 1
        self.log(f"[{self.finished}/{self.total}] {cell.label} on {self.names[i]} ({result['server']}): "
                 f"{row['seconds'] or row['wall_seconds']:.1f} s")


def stop_workers(ray, workers) -> None:
    """End the workers' servers, then the actors."""
    try:
        ray.get([w.stop.remote() for w in workers], timeout=30)
    except Exception:
        pass
    for w in workers:
        try:
            ray.kill(w, no_restart=True)
        except Exception:
            pass


def main(args, spec: Spec, workflow: str) -> int:
    """The Ray mode of ``zlab sweep``: same checks, outputs and report as the HTTP mode."""
    from . import sweep

    ray = import_ray()
    workers = start_workers(ray, args)
    try:
        infos = worker_infos(ray, workers, print)
        first = workers[min(infos)]
        object_info = ray.get(first.object_info.remote())

        class SchemaClient:  # what load_workflow needs to convert a UI-format workflow
            def object_info(self):
                return object_info

        prepared = sweep.prepare(spec, workflow, args, object_info, SchemaClient())
        if prepared is None:
            return 0
        base, all_cells = prepared
        for info, missing in zip(infos.values(), ray.get([workers[i].missing_node_types.remote(base) for i in infos])):
            if missing:
                raise SweepError(f"the server of Ray worker {info['name']} ({info['node']}) lacks node types {missing}")
        setup = sweep.setup_record([], [(i["url"], i["system_stats"]) for i in infos.values()])
        setup["ray"] = {"address": args.ray or "local",
                        "workers": [{k: i[k] for k in ("name", "node", "url")} for i in infos.values()]}
        out_dir = sweep.open_out_dir(spec, workflow, args, base, setup)
        runner = RayRunner(ray, spec, base, workers, [f"w{i}" for i in range(len(workers))], out_dir,
                           per_server=args.per_server, timeout=args.timeout, give_up=args.give_up, up=set(infos))
        return sweep.run_and_report(spec, workflow, all_cells, runner, out_dir)
    finally:
        stop_workers(ray, workers)
        ray.shutdown()
