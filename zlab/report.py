"""``python -m zlab report SWEEP_DIR``: one self-contained HTML report (and a markdown twin) of a sweep.

Layout of the research notes: setup (spec, exact command, ComfyUI and pack versions, server GPU),
per-condition means with 95% bootstrap intervals over seeds, differences to the reference condition
paired by seed, plots of every metric against every swept input (bands = intervals; a heatmap for
two-input grids), human preference (Bradley-Terry, from ``zlab rate``), contact sheet, best and
worst cells. Reads results.json / results.jsonl, sweep.json, scores.json (``zlab score``) and
ratings.sqlite (``zlab rate``) from the sweep folder.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .sweep import REPO


def core_module(name: str):
    """A module of this pack's core/ (plain python), importable without ComfyUI."""
    import importlib
    import sys

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module(f"core.{name}")

NOT_METRICS = {"seed", "seconds", "wall_seconds"}
LOWER_IS_BETTER = {"pixel_rmse", "pixel_mae", "fid", "lpips_to_reference", "seconds"}


@dataclass
class Sweep:
    """What a sweep folder holds, joined per cell."""
    out_dir: Path
    spec: dict
    meta: dict
    rows: list[dict]
    params: list[str]
    metrics: list[str]
    preference: dict = field(default_factory=dict)
    condition_scores: dict = field(default_factory=dict)

    def condition(self, row) -> tuple:
        return tuple(row["params"].get(p) for p in self.params)

    def label(self, condition: tuple) -> str:
        return ", ".join(f"{short(p)}={v}" for p, v in zip(self.params, condition))

    def reference(self, condition: tuple) -> tuple | None:
        ref = self.spec.get("reference")
        if not ref:
            return None
        return tuple(ref.get(p, v) for p, v in zip(self.params, condition))


def short(address: str) -> str:
    """'Z-Image Sampler.shift' -> 'shift'."""
    return address.rsplit(".", 1)[-1]


def read_rows(out_dir: Path) -> list[dict]:
    """Finished cells: results.json if written, else the lines of results.jsonl (last line per cell wins)."""
    path = out_dir / "results.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))["rows"]
    rows = {}
    jsonl = out_dir / "results.jsonl"
    if not jsonl.exists():
        raise FileNotFoundError(f"{out_dir} has no results.json or results.jsonl: is it a zlab sweep folder?")
    for line in jsonl.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[row["cell"]] = row
    return list(rows.values())


def load_sweep(out_dir) -> Sweep:
    """Rows (with zlab score's scores and the Bradley-Terry preference merged in), spec and metadata."""
    out_dir = Path(out_dir)
    meta = json.loads((out_dir / "sweep.json").read_text(encoding="utf-8")) if (out_dir / "sweep.json").exists() else {}
    rows = [r for r in read_rows(out_dir) if r.get("status", "ok") == "ok"]
    spec = meta.get("spec") or {}
    if not spec and (out_dir / "results.json").exists():
        spec = json.loads((out_dir / "results.json").read_text(encoding="utf-8")).get("spec", {})
    scores = out_dir / "scores.json"
    if scores.exists():
        scored = json.loads(scores.read_text(encoding="utf-8"))
        rows = [{**r, **scored.get("cells", {}).get(r["cell"], {})} for r in rows]
    params = list(spec.get("params") or sorted({p for r in rows for p in r.get("params", {})}))
    metrics = []
    for row in rows:
        for k, v in row.items():
            if k not in metrics and k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool):
                metrics.append(k)
    sweep = Sweep(out_dir, spec, meta, rows, params, metrics)
    if scores.exists():
        sweep.condition_scores = scored.get("conditions", {})
    if (out_dir / "ratings.sqlite").exists():
        from . import rate

        sweep.preference = rate.preference(out_dir, sweep)
    return sweep


def summarise(sweep: Sweep) -> list[dict]:
    """Per condition: label, seeds, and per metric (mean, low, high) and the paired difference to its reference."""
    stats = core_module("stats")
    by_condition: dict[tuple, dict[int, dict]] = {}
    for row in sweep.rows:
        by_condition.setdefault(sweep.condition(row), {})[row["seed"]] = row
    out = []
    for condition, seeds in by_condition.items():
        entry = {"condition": condition, "label": sweep.label(condition), "seeds": sorted(seeds), "metrics": {},
                 "difference": {}, "reference": sweep.reference(condition)}
        ref = by_condition.get(entry["reference"]) if entry["reference"] is not None else None
        for m in sweep.metrics:
            values = {s: r.get(m) for s, r in seeds.items() if isinstance(r.get(m), (int, float))}
            entry["metrics"][m] = stats.mean_interval(list(values.values()))
            if ref is not None and entry["reference"] != condition:
                ref_values = {s: r.get(m) for s, r in ref.items() if isinstance(r.get(m), (int, float))}
                entry["difference"][m] = stats.paired_interval(values, ref_values)
        pref = sweep.preference.get(entry["label"])
        if pref:
            entry["preference"] = pref
        out.append(entry)
    order = {v: k for k, v in enumerate(_spec_order(sweep))}
    return sorted(out, key=lambda e: order.get(e["condition"], len(order)))


def _spec_order(sweep: Sweep) -> list[tuple]:
    import itertools

    values = [sweep.spec.get("params", {}).get(p, []) for p in sweep.params]
    if sweep.spec.get("mode") == "zip":
        return list(zip(*values))
    return list(itertools.product(*values))


def fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}g}"


def interval_text(mean, lo, hi) -> str:
    return f"{fmt(mean)} [{fmt(lo)}, {fmt(hi)}]"


# ----- plots -----

def figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def metric_plots(sweep: Sweep, summary: list[dict]) -> list[tuple[str, bytes]]:
    """For every metric and swept input: mean with its interval band (one line per value of another input);
    for two-input grids also a heatmap of the means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    for metric in sweep.metrics:
        for k, param in enumerate(sweep.params):
            others = [j for j in range(len(sweep.params)) if j != k]
            groups: dict[tuple, list] = {}
            for e in summary:
                groups.setdefault(tuple(e["condition"][j] for j in others), []).append(e)
            fig, ax = plt.subplots(figsize=(6, 3.6))
            for group, entries in list(groups.items())[:10]:
                xs = [e["condition"][k] for e in entries]
                positions = xs if numeric(xs) else list(range(len(xs)))
                mean, lo, hi = zip(*(e["metrics"][metric] for e in entries))
                name = ", ".join(f"{short(sweep.params[j])}={v}" for j, v in zip(others, group)) or metric
                ax.plot(positions, mean, marker="o", label=name)
                ax.fill_between(positions, lo, hi, alpha=0.2)
                if not numeric(xs):
                    ax.set_xticks(positions, [str(x) for x in xs], rotation=30)
            ax.set_xlabel(short(param))
            ax.set_ylabel(metric)
            ax.set_title(f"{metric} vs {short(param)} (mean, 95% CI over seeds)")
            if len(groups) > 1:
                ax.legend(fontsize=7)
            plots.append((f"{metric} vs {short(param)}", figure_png(fig)))
        if len(sweep.params) == 2 and sweep.spec.get("mode", "grid") == "grid":
            plots.append((f"{metric} heatmap", heatmap(sweep, summary, metric, plt)))
    return plots


def heatmap(sweep: Sweep, summary: list[dict], metric: str, plt) -> bytes:
    import numpy as np

    rows, cols = (sweep.spec.get("params", {}).get(p) or sorted({e["condition"][i] for e in summary})
                  for i, p in enumerate(sweep.params))
    grid = np.full((len(rows), len(cols)), np.nan)
    for e in summary:
        r, c = e["condition"]
        if r in rows and c in cols:
            grid[rows.index(r), cols.index(c)] = e["metrics"][metric][0]
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(cols), 1.0 + 0.5 * len(rows)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel(short(sweep.params[1]))
    ax.set_ylabel(short(sweep.params[0]))
    for (i, j), v in np.ndenumerate(grid):
        if not np.isnan(v):
            ax.text(j, i, fmt(v, 3), ha="center", va="center", fontsize=7, color="w")
    fig.colorbar(im, ax=ax, label=metric)
    ax.set_title(f"{metric}: mean over seeds")
    return figure_png(fig)


def thumbnail(path: Path, size: int = 192, quality: int = 85) -> bytes | None:
    from PIL import Image

    if not path.exists():
        return None
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size))
        buffer = io.BytesIO()
        im.save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()


def extremes(sweep: Sweep, metric: str, n: int = 3) -> tuple[list[dict], list[dict]]:
    """(best, worst) cells by one metric (lower is better for distances)."""
    rows = [r for r in sweep.rows if isinstance(r.get(metric), (int, float)) and not math.isnan(r[metric])]
    rows.sort(key=lambda r: r[metric], reverse=metric not in LOWER_IS_BETTER)
    return rows[:n], rows[::-1][:n]


# ----- documents -----

def build(sweep: Sweep) -> dict:
    """Everything the two renderers need."""
    summary = summarise(sweep)
    plots = metric_plots(sweep, summary) if sweep.metrics and sweep.params else []
    sheet = sweep.out_dir / "contact_sheet.png"
    pictures = {}
    for metric in sweep.metrics:
        for r in sum(extremes(sweep, metric), []):
            if r.get("image") and r["cell"] not in pictures:
                pictures[r["cell"]] = thumbnail(sweep.out_dir / r["image"])
    return {"summary": summary, "plots": plots, "contact_sheet": thumbnail(sheet, 1600, 88) if sheet.exists() else None,
            "pictures": pictures}


def setup_lines(sweep: Sweep) -> list[tuple[str, str]]:
    setup = sweep.meta.get("setup", {})
    servers = setup.get("servers") or []
    gpu = "; ".join(", ".join(d.get("name", "?") for d in s.get("devices", [])) for s in servers) or "not recorded"
    comfy = ", ".join(sorted({str(s.get("comfyui_version")) for s in servers})) or "not recorded"
    seeds = sweep.spec.get("seeds", [])
    return [("sweep", sweep.spec.get("name", sweep.out_dir.name)), ("description", sweep.spec.get("description", "")),
            ("workflow", str(sweep.meta.get("workflow", sweep.spec.get("workflow", "")))),
            ("command", setup.get("command", "not recorded")), ("ComfyUI", comfy),
            ("Z-Image Lab", setup.get("pack_version", "not recorded")), ("server GPU", gpu),
            ("swept", "; ".join(f"{p}: {sweep.spec['params'][p]}" for p in sweep.params if p in sweep.spec.get("params", {}))),
            ("seeds", f"{len(seeds)} ({', '.join(map(str, seeds[:12]))}{', ...' if len(seeds) > 12 else ''})"),
            ("fixed", json.dumps(sweep.spec.get("fixed") or {})), ("reference", json.dumps(sweep.spec.get("reference"))),
            ("cells finished", str(len(sweep.rows)))]


def tables(sweep: Sweep, summary: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the results tables, shared by HTML and markdown."""
    header = ["condition", "n"] + sweep.metrics
    means = [[e["label"], str(len(e["seeds"]))] + [interval_text(*e["metrics"][m]) for m in sweep.metrics]
             for e in summary]
    out = [("Mean per condition [95% bootstrap CI over seeds]", header, means)]
    diffs = [[e["label"], str(e["difference"][sweep.metrics[0]][3])]
             + [interval_text(*e["difference"][m][:3]) for m in sweep.metrics] for e in summary if e["difference"]]
    if diffs:
        out.append(("Difference to the reference condition, paired by seed [95% CI]", header, diffs))
    set_metrics = sorted({m for v in sweep.condition_scores.values() for m in v})
    if set_metrics:
        out.append(("Set metrics per condition (over its seeds; zlab score)", ["condition"] + set_metrics,
                    [[e["label"]] + [fmt(sweep.condition_scores.get(e["label"], {}).get(m)) for m in set_metrics]
                     for e in summary]))
    if sweep.preference:
        pref = [[e["label"], str(e["preference"]["votes"]), interval_text(e["preference"]["score"], e["preference"]["low"],
                                                                          e["preference"]["high"]),
                 f'{e["preference"]["wins"]}/{e["preference"]["ties"]}/{e["preference"]["losses"]}']
                for e in summary if e.get("preference")]
        out.append(("Human preference (Bradley-Terry log-strength [95% CI]; zlab rate)",
                    ["condition", "votes", "score", "wins/ties/losses"], pref))
    return out


def render_html(sweep: Sweep, doc: dict) -> str:
    e = html.escape

    def img(data: bytes, alt: str, mime: str = "image/png") -> str:
        return f'<img alt="{e(alt)}" src="data:{mime};base64,{base64.b64encode(data).decode()}">'

    def table(header, rows):
        head = "".join(f"<th>{e(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    parts = [f"<h1>Sweep report: {e(sweep.spec.get('name', sweep.out_dir.name))}</h1>", "<h2>Setup</h2>",
             table(["", ""], setup_lines(sweep)), "<h2>Results</h2>"]
    for title, header, rows in tables(sweep, doc["summary"]):
        parts += [f"<h3>{e(title)}</h3>", table(header, rows)]
    parts.append("<h2>Plots</h2>")
    parts += [f'<figure class="plot">{img(png, title)}<figcaption>{e(title)}</figcaption></figure>'
              for title, png in doc["plots"]]
    if doc["contact_sheet"]:
        parts += ["<h2>Contact sheet</h2>", img(doc["contact_sheet"], "contact sheet", "image/jpeg")]
    parts.append("<h2>Best and worst cells</h2>")
    for metric in sweep.metrics:
        best, worst = extremes(sweep, metric)
        for kind, rows in (("best", best), ("worst", worst)):
            cells = "".join(f'<figure class="cell">{img(doc["pictures"][r["cell"]], r["label"], "image/jpeg") if doc["pictures"].get(r["cell"]) else ""}'
                            f'<figcaption>{e(r["label"])}<br>{metric} = {fmt(r[metric])}</figcaption></figure>' for r in rows)
            parts.append(f"<h4>{e(metric)}: {kind}</h4><div class=cells>{cells}</div>")
    parts.append("<h2>Conclusions</h2><p>(Write them here.)</p>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}figure{display:inline-block;margin:6px}"
             "figcaption{font-size:12px}img{max-width:100%}.cells{display:flex;flex-wrap:wrap}")
    return (f"<!DOCTYPE html><html><head><meta charset=utf-8><title>{e(sweep.spec.get('name', 'sweep'))} report</title>"
            f"<link rel=icon href=data:,><style>{style}</style></head><body>{''.join(parts)}</body></html>")


def render_markdown(sweep: Sweep, doc: dict, asset_dir: Path) -> str:
    """The markdown twin; plots and thumbnails written as files under asset_dir."""
    asset_dir.mkdir(parents=True, exist_ok=True)
    rel = asset_dir.name

    def table(header, rows):
        esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
        return "\n".join(["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(map(esc, r)) + " |" for r in rows])

    lines = [f"# Sweep report: {sweep.spec.get('name', sweep.out_dir.name)}", "", "## Setup", "",
             table(["", ""], setup_lines(sweep)), "", "## Results", ""]
    for title, header, rows in tables(sweep, doc["summary"]):
        lines += [f"### {title}", "", table(header, rows), ""]
    lines += ["## Plots", ""]
    for k, (title, png) in enumerate(doc["plots"]):
        (asset_dir / f"plot_{k}.png").write_bytes(png)
        lines += [f"![{title}]({rel}/plot_{k}.png)", ""]
    if doc["contact_sheet"]:
        (asset_dir / "contact_sheet.jpg").write_bytes(doc["contact_sheet"])
        lines += ["## Contact sheet", "", f"![contact sheet]({rel}/contact_sheet.jpg)", ""]
    lines += ["## Best and worst cells", ""]
    for metric in sweep.metrics:
        best, worst = extremes(sweep, metric)
        lines.append(f"- **{metric}** best: " + "; ".join(f"{r['label']} ({fmt(r[metric])})" for r in best)
                     + " — worst: " + "; ".join(f"{r['label']} ({fmt(r[metric])})" for r in worst))
    lines += ["", "## Conclusions", "", "(Write them here.)", ""]
    return "\n".join(lines)


def write_report(out_dir, name: str = "report") -> tuple[Path, Path]:
    """Write OUT/report.html and OUT/report.md (+ OUT/report_files/); return both paths."""
    sweep = load_sweep(out_dir)
    doc = build(sweep)
    html_path, md_path = sweep.out_dir / f"{name}.html", sweep.out_dir / f"{name}.md"
    html_path.write_text(render_html(sweep, doc), encoding="utf-8")
    md_path.write_text(render_markdown(sweep, doc, sweep.out_dir / f"{name}_files"), encoding="utf-8")
    return html_path, md_path


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write an HTML + markdown report of a sweep folder",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", help="the sweep's output folder (holds results.jsonl)")
    p.add_argument("--name", default="report", help="file name stem (default report: report.html, report.md)")
    p.set_defaults(func=main)


def main(args) -> int:
    html_path, md_path = write_report(args.sweep_dir, args.name)
    print(f"wrote {html_path} and {md_path}")
    return 0
