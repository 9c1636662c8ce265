"""``python -m zlab rate SWEEP_DIR``: blind pairwise preference, served on a local page.

Shows two images of the same seed from two different conditions, sides randomised, labels hidden;
keys: Left arrow / 1 = left, Right arrow / 2 = right, Down arrow / T = tie, S / Space = skip. Votes go
to OUT/ratings.sqlite (several raters by name; a rater resumes where they stopped, never shown a pair
twice). Bradley-Terry log-strengths with intervals per condition (core/stats.py) are printed at exit,
written to OUT/preference.json and shown in ``zlab report``.
"""

from __future__ import annotations

import json
import random
import secrets
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from .report import core_module, load_sweep

DB = "ratings.sqlite"
OUTCOMES = ("left", "right", "tie", "skip")
SCHEMA = """CREATE TABLE IF NOT EXISTS votes (
  id INTEGER PRIMARY KEY, rater TEXT NOT NULL, seed INTEGER, left_cell TEXT NOT NULL, right_cell TEXT NOT NULL,
  left_condition TEXT NOT NULL, right_condition TEXT NOT NULL, outcome TEXT NOT NULL,
  created TEXT DEFAULT CURRENT_TIMESTAMP)"""


def connect(out_dir) -> sqlite3.Connection:
    db = sqlite3.connect(Path(out_dir) / DB, check_same_thread=False)
    db.execute(SCHEMA)
    return db


def pairs(sweep) -> list[tuple[dict, dict]]:
    """Every unordered pair of cells with the same seed and different conditions."""
    by_seed: dict[int, list] = {}
    for r in sweep.rows:
        if r.get("image"):
            by_seed.setdefault(r["seed"], []).append(r)
    out = []
    for rows in by_seed.values():
        for i, a in enumerate(rows):
            out += [(a, b) for b in rows[i + 1:] if sweep.condition(a) != sweep.condition(b)]
    return out


def votes(out_dir) -> list[tuple[str, str, str]]:
    """(left condition, right condition, outcome) of every stored vote."""
    db = connect(out_dir)
    try:
        return db.execute("SELECT left_condition, right_condition, outcome FROM votes ORDER BY id").fetchall()
    finally:
        db.close()


def preference(out_dir, sweep) -> dict[str, dict]:
    """Bradley-Terry per condition label from the stored votes ({} when there are none)."""
    cast = [v for v in votes(out_dir) if v[2] != "skip"]
    if not cast:
        return {}
    labels = sorted({sweep.label(sweep.condition(r)) for r in sweep.rows})
    return core_module("stats").bradley_terry(cast, conditions=labels)


class RatingSession:
    """The pair queue and the vote store behind the page."""

    def __init__(self, out_dir, rng: random.Random | None = None):
        self.sweep = load_sweep(out_dir)
        self.out_dir = self.sweep.out_dir
        self.pairs = pairs(self.sweep)
        self.db = connect(self.out_dir)
        self.rng = rng or random.Random()
        self.pending: dict[str, tuple[dict, dict]] = {}
        self.lock = threading.Lock()

    def seen(self, rater: str) -> set[frozenset]:
        rows = self.db.execute("SELECT left_cell, right_cell FROM votes WHERE rater = ?", (rater,)).fetchall()
        return {frozenset(r) for r in rows}

    def next_pair(self, rater: str) -> dict:
        with self.lock:
            seen = self.seen(rater)
            todo = [p for p in self.pairs if frozenset((p[0]["cell"], p[1]["cell"])) not in seen]
            total = len(self.pairs)
            if not todo:
                return {"done": True, "rated": total - len(todo), "total": total}
            left, right = self.rng.choice(todo)
            if self.rng.random() < 0.5:
                left, right = right, left
            token = secrets.token_hex(8)
            self.pending[token] = (left, right)
            return {"done": False, "token": token, "left": "/image/" + left["image"], "right": "/image/" + right["image"],
                    "rated": total - len(todo), "total": total}

    def vote(self, rater: str, token: str, outcome: str) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome {outcome!r}: one of {', '.join(OUTCOMES)}")
        if not rater.strip():
            raise ValueError("rater name is empty: type your name first")
        with self.lock:
            if token not in self.pending:
                raise ValueError("unknown or already used pair token")
            left, right = self.pending.pop(token)
            label = lambda r: self.sweep.label(self.sweep.condition(r))  # noqa: E731
            self.db.execute("INSERT INTO votes (rater, seed, left_cell, right_cell, left_condition, right_condition, outcome) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)", (rater.strip(), left["seed"], left["cell"], right["cell"],
                                                             label(left), label(right), outcome))
            self.db.commit()


PAGE = """<!DOCTYPE html><html><head><meta charset=utf-8><title>zlab rate</title><link rel=icon href=data:,>
<style>body{font-family:sans-serif;margin:1em;background:#222;color:#eee}#pair{display:flex;gap:1em}
#pair img{max-width:48vw;max-height:80vh}button{margin:.3em;font-size:1em}</style></head><body>
<div>Rater: <input id=rater placeholder="your name"> <span id=progress></span></div>
<p>Which image is better? &larr;/1 left &middot; &rarr;/2 right &middot; &darr;/T tie &middot; S/space skip</p>
<div id=pair><img id=left alt="left image"><img id=right alt="right image"></div>
<div><button data-o=left>Left</button><button data-o=tie>Tie</button><button data-o=right>Right</button>
<button data-o=skip>Skip</button></div><p id=status></p>
<script>
const q = new URLSearchParams(location.search);
const rater = document.getElementById('rater');
rater.value = q.get('rater') || localStorage.getItem('zlab-rater') || '';
let current = null, busy = false;
async function next() {
  if (!rater.value.trim()) { document.getElementById('status').textContent = 'Type your name to start.'; return; }
  localStorage.setItem('zlab-rater', rater.value.trim());
  const r = await fetch('/api/next?rater=' + encodeURIComponent(rater.value.trim()));
  current = await r.json();
  document.getElementById('progress').textContent = current.rated + ' / ' + current.total + ' pairs rated';
  if (current.done) { document.getElementById('status').textContent = 'All pairs rated. Thank you!';
    document.getElementById('pair').hidden = true; return; }
  document.getElementById('left').src = current.left;
  document.getElementById('right').src = current.right;
  document.getElementById('status').textContent = '';
}
async function vote(outcome) {
  if (!current || current.done || busy) return;
  busy = true;
  try {
    const r = await fetch('/api/vote', {method: 'POST', headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({rater: rater.value.trim(), token: current.token, outcome})});
    if (!r.ok) { document.getElementById('status').textContent = await r.text(); return; }
    await next();
  } finally { busy = false; }
}
const keys = {ArrowLeft: 'left', '1': 'left', ArrowRight: 'right', '2': 'right', ArrowDown: 'tie', t: 'tie', T: 'tie',
              s: 'skip', S: 'skip', ' ': 'skip'};
document.addEventListener('keydown', e => { if (e.target === rater) { if (e.key === 'Enter') next(); return; }
  if (keys[e.key]) { e.preventDefault(); vote(keys[e.key]); } });
document.querySelectorAll('button[data-o]').forEach(b => b.onclick = () => vote(b.dataset.o));
rater.addEventListener('change', next);
next();
</script></body></html>"""


def make_handler(session: RatingSession):
    images = (session.out_dir).resolve()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send(self, code: int, body: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            url = urlparse(self.path)
            if url.path == "/":
                return self.send(200, PAGE.encode(), "text/html; charset=utf-8")
            if url.path == "/api/next":
                rater = parse_qs(url.query).get("rater", [""])[0]
                return self.send(200, json.dumps(session.next_pair(rater)).encode(), "application/json")
            if url.path.startswith("/image/"):
                path = (images / unquote(url.path[len("/image/"):])).resolve()
                if images in path.parents and path.is_file():
                    kind = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
                    return self.send(200, path.read_bytes(), kind)
            self.send(404, b"not found", "text/plain")

        def do_POST(self):
            if urlparse(self.path).path != "/api/vote":
                return self.send(404, b"not found", "text/plain")
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                session.vote(str(body.get("rater", "")), str(body.get("token", "")), str(body.get("outcome", "")))
            except (ValueError, json.JSONDecodeError) as e:
                return self.send(400, str(e).encode(), "text/plain")
            self.send(200, b"{}", "application/json")

    return Handler


def serve(out_dir, port: int = 8765) -> ThreadingHTTPServer:
    """A server on 127.0.0.1 (port 0 picks a free one); call serve_forever() on it."""
    session = RatingSession(out_dir)
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(session))
    server.session = session
    return server


def write_preference(out_dir) -> dict:
    sweep = load_sweep(out_dir)
    (sweep.out_dir / "preference.json").write_text(json.dumps(sweep.preference, indent=1), encoding="utf-8")
    return sweep.preference


def add_parser(sub) -> None:
    p = sub.add_parser("rate", help="blind pairwise rating page for a sweep (votes in ratings.sqlite)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", help="the sweep's output folder")
    p.add_argument("--port", type=int, default=8765, help="local port (bound to 127.0.0.1 only)")
    p.add_argument("--scores", action="store_true", help="print the Bradley-Terry scores and exit")
    p.set_defaults(func=main)


def main(args) -> int:
    if not args.scores:
        server = serve(args.sweep_dir, args.port)
        print(f"rating page: http://127.0.0.1:{server.server_address[1]}/  ({len(server.session.pairs)} pairs; Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    for label, s in sorted(write_preference(args.sweep_dir).items(), key=lambda kv: -kv[1]["score"]):
        print(f"{s['score']:+.3f} [{s['low']:+.3f}, {s['high']:+.3f}]  {s['votes']:4d} votes  {label}")
    return 0
