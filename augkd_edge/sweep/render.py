"""``sweep.md``, ``sweep.html`` and the accuracy-vs-latency plot from a ``sweep.json`` document.

The HTML page is self-contained (the plot is an embedded PNG) so it can be mailed or
attached to a ticket; the PNG is also written next to it for READMEs.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from augkd_edge.export.bench_render import md_table


def _ms(entry: dict[str, Any], key: str) -> str:
    """A latency statistic for a table cell; '-' when the candidate has none."""
    latency = entry.get("latency_ms") or {}
    return f"{latency[key]:.3f}" if latency.get(key) is not None else "-"


def table(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per candidate, most accurate first (faster first on ties); failed ones last."""
    header = ["student", "precision", "backend", "batch", "top-1", "median ms", "p90 ms", "p99 ms", "params",
              "model MB", "Pareto", "chosen", "status"]
    order = sorted(doc["candidates"], key=lambda e: (e["status"] != "ok", -(e.get("top1") or 0.0),
                                                     (e.get("latency_ms") or {}).get("median", float("inf"))))
    rows = []
    for e in order:
        status = "ok" if e["status"] == "ok" else f"failed: {e.get('reason') or ''}"
        rows.append([e["student"], e["precision"], str(e["backend"]), str(e["batch"]),
                     f"{e['top1']:.4f}" if e.get("top1") is not None else "-", _ms(e, "median"), _ms(e, "p90"),
                     _ms(e, "p99"), f"{e['params']:,}" if e.get("params") else "-",
                     f"{e['model_bytes'] / 1e6:.2f}" if e.get("model_bytes") else "-",
                     "yes" if e["pareto"] else "", "**yes**" if e["chosen"] else "", status])
    return header, rows


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """The settings, the latency source, the budget's verdict and what is missing, in words."""
    s = doc["settings"]
    lines = [f"Command: `{doc['command']}`",
             f"Method {s['method']}, preset {s['preset']}, seed {s['seed']}; latency {s['backend']} "
             f"({'cuda' if s['backend'] == 'trt' else s['device']}), batch {s['batch']}, "
             f"threads {s['threads'] or 'default'}, {s['iters']} timed iterations after {s['warmup']} warm-up."]
    if doc.get("latency_from"):
        src = doc["latency_from"]
        lines.append(f"Latencies from the target's report `{src['path']}` (label {src.get('label')!r}), matched by "
                     f"model file sha256 or name; not this machine's.")
    if doc.get("choice"):
        lines.append(f"**{doc['choice']['message']}**")
    lines += [f"Unmatched in the latency report: {u['id']}: {u['reason']}" for u in doc.get("unmatched", [])]
    lines += [f"No latency for {e['id']}: {e['latency_source']['reason']}" for e in doc["candidates"]
              if e["status"] == "ok" and not e.get("latency_ms") and (e.get("latency_source") or {}).get("reason")
              and not (e["latency_source"]["reason"] or "").startswith("unmatched")]
    lines += [f"Failed: {f['id']}: {f['reason']}" for f in doc.get("failed", [])]
    return lines


def markdown(doc: dict[str, Any]) -> str:
    """``sweep.md``: the summary, the table and a pointer to the plot."""
    header, rows = table(doc)
    parts = ["# augkd-edge sweep", "", *[f"- {line}" for line in summary_lines(doc)], "",
             md_table(header, rows), "",
             "Top-1 on the student domain's test split; latency in ms per batch. Pareto: no other candidate is "
             "both at least as accurate and at least as fast. Plot: `sweep.png` (also inside `sweep.html`).", ""]
    return "\n".join(parts)


def plot_png(doc: dict[str, Any]) -> bytes | None:
    """Accuracy against median latency, one marker per precision, the Pareto front as a line; None without data."""
    points = [e for e in doc["candidates"] if e["status"] == "ok" and e.get("top1") is not None
              and (e.get("latency_ms") or {}).get("median") is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for precision, marker in (("fp32", "o"), ("int8", "s")):
        mine = [e for e in points if e["precision"] == precision]
        ax.scatter([e["latency_ms"]["median"] for e in mine], [e["top1"] for e in mine], marker=marker, s=45,
                   label=precision, zorder=3)
    for i, e in enumerate(sorted(points, key=lambda e: e["latency_ms"]["median"])):  # labels alternate up/down
        ax.annotate(e["id"], (e["latency_ms"]["median"], e["top1"]), fontsize=7, xytext=(4, 4 if i % 2 else -10),
                    textcoords="offset points")
    front = sorted((e for e in points if e["pareto"]), key=lambda e: e["latency_ms"]["median"])
    ax.step([e["latency_ms"]["median"] for e in front], [e["top1"] for e in front], where="post", color="tab:red",
            label="Pareto front", zorder=2)
    chosen = [e for e in points if e["chosen"]]
    if chosen:
        ax.scatter([chosen[0]["latency_ms"]["median"]], [chosen[0]["top1"]], s=220, facecolors="none",
                   edgecolors="black", label="chosen", zorder=4)
    budget = (doc.get("settings") or {}).get("latency_budget_ms")
    if budget is not None:
        ax.axvline(budget, color="grey", linestyle="--", label=f"budget {budget:g} ms")
    medians = [e["latency_ms"]["median"] for e in points]
    log_x = max(medians) > 5 * min(medians)  # small and large students would crowd a linear axis
    if log_x:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            axis(FuncFormatter(lambda value, _: f"{value:g}"))  # 0.2, not 2 x 10^-1
    ax.set_xlabel(f"median latency (ms{', log scale' if log_x else ''}), {doc['settings']['backend']}, "
                  f"batch {doc['settings']['batch']}")
    ax.set_ylabel("top-1 (student-domain test split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def html_page(doc: dict[str, Any], png: bytes | None) -> str:
    """``sweep.html``: summary, plot (embedded PNG) and table in one file."""
    header, rows = table(doc)
    esc = html.escape
    items = "".join(f"<li>{esc(line).replace('**', '')}</li>" for line in summary_lines(doc))
    img = (f'<img alt="top-1 against median latency" src="data:image/png;base64,'
           f'{base64.b64encode(png).decode("ascii")}">' if png else "<p>No candidate has both numbers to plot.</p>")
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c.replace('**', ''))}</td>" for c in row) + "</tr>" for row in rows)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>augkd-edge sweep</title>"
            f"<style>{style}</style></head><body><h1>augkd-edge sweep</h1><ul>{items}</ul>{img}"
            f"<table><tr>{head}</tr>{body}</table></body></html>\n")
