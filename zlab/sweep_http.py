"""The HTTP scheduler of ``zlab sweep``: cells spread over a list of ComfyUI server URLs, one feeder thread each.

A server that stops answering (refused or no answer within ``server_timeout``) is taken out of rotation and
its in-flight cells go back to the queue for the others; it is asked again every PROBE_S seconds and comes
back into rotation when it answers. A cell whose prompt fails on two servers is recorded failed.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .api import ComfyClient, ComfyError, ServerUnreachable
from .sweep_outputs import CellFailures, Recorder, Results, execution_seconds, fetch_outputs
from .server_score import add_scoring, read_scores, sweep_models
from .sweep_spec import Cell, Spec, SweepError, build_prompt


class ServerGone(Exception):
    """A server stopped answering; its cells go back to the queue for the other servers."""


class Runner:
    """Runs the cells on the servers, appending each finished cell to the results.

    Each server has one feeder thread that keeps ``per_server`` prompts in flight (queued or running
    on that server): whenever one finishes, the next cell is queued before anything else happens, so
    the server always has the next prompt waiting and its GPU never idles between prompts. Downloads
    and image metrics run on a separate pool and never delay the next submission. A row is appended
    only once its files are on disk, so a kill at any moment loses no finished row and writes none twice.
    """

    POLL_S = 0.1
    PROBE_S = 1.0

    def __init__(self, spec: Spec, base: dict, urls: list[str], out_dir: Path, per_server: int = 3,
                 timeout: float = 3600.0, server_timeout: float = 60.0, give_up: float = 600.0, log=print):
        self.spec, self.base, self.urls, self.out_dir = spec, base, urls, out_dir
        self.per_server, self.timeout, self.log = per_server, timeout, log
        self.server_timeout, self.give_up = server_timeout, give_up
        self.results = Results(out_dir)
        self.recorder = Recorder(spec, out_dir, self.results, log)
        self.failures = CellFailures(len(urls))
        self.todo: queue.Queue[Cell] = queue.Queue()
        self.down: set[str] = set()
        self.failed: list[tuple[Cell, str]] = []
        self.lock = threading.Lock()
        self.open = self.finished = self.retried = 0
        self.stopping = False
        self.pending: dict[str, tuple[ComfyClient, str]] = {}
        self.scoring: dict[str, str] = {}

    def run(self, all_cells: list[Cell]) -> None:
        todo = [c for c in all_cells if not self.results.done(c)]
        skipped = len(all_cells) - len(todo)
        self.total = self.open = len(todo)
        self.log(f"sweep {self.spec.name}: {len(all_cells)} cells, {skipped} already done, {len(todo)} to run "
                 f"on {len(self.urls)} server(s)")
        if not todo:
            return
        first = ComfyClient(self.urls[0])
        self.scoring = sweep_models(self.spec.metrics, first.object_info, first.url)
        for cell in todo:
            self.todo.put(cell)
        with ThreadPoolExecutor(max(2, len(self.urls)), thread_name_prefix="sweep download") as downloads:
            feeders = [threading.Thread(target=self.feed, args=(url, downloads), daemon=True, name=f"sweep {url}")
                       for url in self.urls]
            for t in feeders:
                t.start()
            try:
                self.watch(feeders)
            except KeyboardInterrupt:
                self.stopping = True
                self.cancel_pending()
                downloads.shutdown(wait=False, cancel_futures=True)
                raise
        if self.open > 0:
            raise SweepError(f"no server answered for {self.give_up:.0f} s ({', '.join(sorted(self.down))}); "
                             f"{self.open} cells did not run. Start a server and rerun the same command: "
                             "finished cells are kept.")

    def watch(self, feeders: list[threading.Thread]) -> None:
        """Wait for the feeders; stop them when every server has been down for ``give_up`` seconds."""
        all_down_since = None
        while any(t.is_alive() for t in feeders):
            for t in feeders:
                t.join(timeout=0.5)
            if len(self.down) < len(self.urls):
                all_down_since = None
            elif all_down_since is None:
                all_down_since = time.monotonic()
            elif time.monotonic() - all_down_since > self.give_up:
                self.stopping = True

    def feed(self, url: str, downloads: ThreadPoolExecutor) -> None:
        """Keep ``per_server`` prompts in flight on one server until no cell is left; wait out its outages."""
        client = ComfyClient(url, timeout=self.server_timeout)
        in_flight: dict[str, tuple[Cell, float, float]] = {}  # prompt id -> cell, monotonic start, epoch queued
        while not self.stopping and self.open > 0:
            try:
                self.serve(client, in_flight, downloads)
            except ServerGone:
                abandoned = self.take_down(url, in_flight)
                if not self.wait_until_back(client, abandoned):
                    return
            except Exception as e:  # a bug or an answer we cannot read: fail this server's cells, keep the others going
                self.down.add(url)
                for cell, _, _ in in_flight.values():
                    self.cell_failed(cell, url, f"{type(e).__name__}: {e}")
                self.log(f"stopped sending cells to {url}: {type(e).__name__}: {e}")
                return

    def serve(self, client: ComfyClient, in_flight: dict, downloads: ThreadPoolExecutor) -> None:
        """Submit and collect cells on one server until the sweep is over (raises ServerGone)."""
        while not self.stopping:
            while len(in_flight) < self.per_server and self.submit_next(client, in_flight):
                pass
            if not in_flight:
                if self.open == 0:
                    return
                time.sleep(self.POLL_S)  # cells may still come back from a server that stops answering
                continue
            for prompt_id, entry in self.finished_prompts(client, in_flight):
                cell, start, queued_at = in_flight.pop(prompt_id)
                self.pending.pop(prompt_id, None)
                downloads.submit(self.record, client, cell, prompt_id, entry, time.monotonic() - start, queued_at)

    def take_down(self, url: str, in_flight: dict) -> list[str]:
        """Out of rotation: the server's in-flight cells go back to the queue; their prompt ids are returned."""
        self.down.add(url)
        for cell, _, _ in in_flight.values():
            self.requeue(cell)
        abandoned = list(in_flight)
        ids = " ".join(cell.id for cell, _, _ in in_flight.values())
        for prompt_id in abandoned:
            self.pending.pop(prompt_id, None)
        in_flight.clear()
        self.log(f"server {url} stopped answering; its {len(abandoned)} cell(s) in flight go to the other servers: {ids}")
        return abandoned

    def wait_until_back(self, client: ComfyClient, abandoned: list[str]) -> bool:
        """Ask the server again every PROBE_S seconds; True once it answers (back in rotation)."""
        while not self.stopping and self.open > 0:
            time.sleep(self.PROBE_S)
            if self.reachable(client):
                self.delete_prompts(client, abandoned)
                self.down.discard(client.url)
                self.log(f"server {client.url} answers again: back in rotation")
                return True
        return False

    def requeue(self, cell: Cell) -> None:
        with self.lock:
            self.retried += 1
        self.todo.put(cell)

    def others_can_take(self, cell: Cell, url: str) -> bool:
        return any(u != url and u not in self.down and not self.failures.tried(cell, u) for u in self.urls)

    def submit_next(self, client: ComfyClient, in_flight: dict) -> bool:
        """Queue the next cell on this server; False when no cell is left for it."""
        try:
            cell = self.todo.get_nowait()
        except queue.Empty:
            return False
        if self.failures.tried(cell, client.url) and self.others_can_take(cell, client.url):
            self.todo.put(cell)  # it failed here: leave it to a server it has not failed on
            return False
        start = time.monotonic()
        try:
            prompt_id = client.queue(add_scoring(build_prompt(self.base, self.spec, cell), self.scoring))
        except ComfyError as e:
            if isinstance(e, ServerUnreachable) or not self.reachable(client):
                self.todo.put(cell)  # a server problem, not the cell's: it runs again, here or elsewhere
                if not self.reachable(client):
                    raise ServerGone(client.url) from None
                return False
            self.cell_failed(cell, client.url, str(e))
            return True
        in_flight[prompt_id] = (cell, start, round(time.time(), 3))
        self.pending[prompt_id] = (client, prompt_id)
        return True

    def finished_prompts(self, client: ComfyClient, in_flight: dict) -> list[tuple[str, dict | Exception]]:
        """Wait until the oldest in-flight prompt ended (a server runs its queue in order, so only the oldest
        is asked about, and those behind it once it is done); each one's history entry or its error."""
        while True:
            done = []
            for prompt_id, (cell, start, _) in in_flight.items():
                try:
                    entry = client.history(prompt_id)
                except Exception:
                    if not self.reachable(client):
                        raise ServerGone(client.url) from None
                    break  # a hiccup: ask again at the next poll
                status = (entry or {}).get("status", {})
                if entry is not None and (status.get("completed") is not None or status.get("status_str") == "error"):
                    try:
                        done.append((prompt_id, client._check_status(prompt_id, entry)))
                    except ComfyError as e:
                        done.append((prompt_id, e))
                elif time.monotonic() - start > self.timeout:
                    done.append((prompt_id, ComfyError(f"prompt {prompt_id} did not finish within {self.timeout:.0f} s")))
                else:
                    break
            if done:
                return done
            if self.stopping:
                raise ServerGone(client.url)
            time.sleep(self.POLL_S)

    def record(self, client: ComfyClient, cell: Cell, prompt_id: str, entry, wall: float, queued_at: float) -> None:
        """Download a finished cell's files and append its row (or note its failure)."""
        if isinstance(entry, Exception):
            self.cell_failed(cell, client.url, str(entry))
            return
        try:
            files = fetch_outputs(client, entry.get("outputs", {}))
            meta = {"server": client.url, "prompt_id": prompt_id, "seconds": execution_seconds(entry),
                    "wall_seconds": round(wall, 3), "queued_at": queued_at}
            meta.update(read_scores(entry.get("outputs", {})))
            row = self.recorder.save(cell, files, meta)
        except Exception as e:  # a server gone before its files came, an unreadable file, a full disk
            if isinstance(e, (ServerUnreachable, OSError)) or not self.reachable(client):
                self.log(f"cell {cell.id} ({cell.label}): {client.url} did not answer for its files; running it again")
                self.requeue(cell)
            else:
                self.cell_failed(cell, client.url, f"{type(e).__name__}: {e}")
            return
        with self.lock:
            self.finished += 1
            self.open -= 1
            n = self.finished
        self.log(f"[{n}/{self.total}] {cell.label} on {client.url}: {row['seconds'] or wall:.1f} s")

    def cell_failed(self, cell: Cell, url: str, error: str) -> None:
        """A cell failed on one server: try it on another, or record it failed after two servers."""
        if self.failures.add(cell, url, error) or not any(u not in self.down and not self.failures.tried(cell, u)
                                                         for u in self.urls):
            message = self.failures.message(cell)
            self.failed.append((cell, message))
            self.recorder.fail(cell, url, message)
            with self.lock:
                self.open -= 1
            self.log(f"cell {cell.label} failed: {message}")
        else:
            self.log(f"cell {cell.label} failed on {url}: {error}; trying it on another server")
            self.requeue(cell)

    @staticmethod
    def reachable(client: ComfyClient) -> bool:
        try:
            client.get_json("/system_stats")
            return True
        except Exception:
            return False

    @staticmethod
    def delete_prompts(client: ComfyClient, prompt_ids: list[str]) -> None:
        """Best effort: take prompts off a server's queue."""
        if prompt_ids:
            try:
                client._open("/queue", data=json.dumps({"delete": prompt_ids}).encode()).close()
            except Exception:
                pass

    def cancel_pending(self) -> None:
        """Best effort on Ctrl-C: take our still-queued prompts off the servers."""
        for client, prompt_id in list(self.pending.values()):
            self.delete_prompts(client, [prompt_id])
