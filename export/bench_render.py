"""Latency reports rendered for people: tables, Markdown, self-contained HTML with plots.

Reads the schema of ``bench_report.py`` (reports) and ``bench_compare.py``
(comparisons) and writes nothing but text. Torch-free (matplotlib only for the
plots, optional), so it is copied to a board next to ``trt_runner.py``.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

if __package__:
    from . import bench_report
else:  # loose copy on a board (docs/jetson.md)
    import bench_report  # type: ignore[no-redef]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.3g}"
    return str(value)


def config_name(row: dict[str, Any]) -> str:
    return f"{row['model']} {row['backend']}/{row['device']}/{row['precision']}"


def result_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the main results table (shared by Markdown and HTML)."""
    has_top1 = any("top1" in r for r in report["results"])
    header = ["model", "backend", "device", "precision", "batch", "median ms", "mean ms", "std ms",
              "p90 ms", "p95 ms", "p99 ms", "min ms", "images/s", "peak RSS MB", "GPU MB"]
    header += ["top-1"] if has_top1 else []
    rows = []
    for r in report["results"]:
        cells = [r["model"], r["backend"], r["device"], r["precision"], str(r["batch"])]
        if "error" in r:
            cells += ["failed"] + ["-"] * (len(header) - len(cells) - 1)
        else:
            lat, mem = r["latency_ms"], r.get("memory_mb", {})
            cells += [_fmt(lat[k]) for k in ("median", "mean", "std", "p90", "p95", "p99", "min")]
            cells += [_fmt(r["throughput_ips"], 1), _fmt(mem.get("host_peak_rss"), 1),
                      _fmt(mem.get("device_peak"), 1)]
            if has_top1:
                cells.append(_fmt(r.get("top1"), 4))
        rows.append(cells)
    return header, rows


def environment_lines(report: dict[str, Any]) -> list[str]:
    env = report.get("environment", {})
    cpu = env.get("cpu", {})
    gpus = env.get("gpus") or []
    libs = env.get("libraries", {})
    threads = {k: v for k, v in env.get("threads", {}).items() if v is not None}
    settings = report.get("settings", {})
    budget = (f"{settings.get('iters')} iterations" if settings.get("iters")
              else f"{settings.get('seconds')} s budget")
    lines = [
        f"label: {env.get('label') or '-'}; measured {report.get('created')} with "
        f"{report.get('tool', {}).get('name')} {report.get('tool', {}).get('version')}",
        f"CPU: {cpu.get('model')} ({cpu.get('usable_cores')} usable / {cpu.get('logical_cores')} logical cores); "
        f"{env.get('os')} {env.get('arch')}; Python {env.get('python')}",
        "GPU: " + ("; ".join(f"{g.get('name')} (driver {g.get('driver')}, CC {g.get('compute_capability')})"
                             for g in gpus) or "none"),
        "libraries: " + ", ".join(f"{k} {v}" for k, v in sorted(libs.items())),
        "threads: " + (", ".join(f"{k}={v}" for k, v in sorted(threads.items())) or "defaults"),
        f"settings: warm-up {settings.get('warmup')}, {budget}, percentiles "
        f"{settings.get('percentile_method')}, std ddof {settings.get('std_ddof')}",
    ]
    if env.get("jetson"):
        lines.insert(2, f"Jetson: {env['jetson'].get('board')} ({env['jetson'].get('l4t')})")
    return lines


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub Markdown table; '|' inside a cell is escaped so no value can break the table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


def _errors(report: dict[str, Any]) -> list[str]:
    return [f"{config_name(r)} batch {r['batch']}{' (eval)' if key == 'eval_error' else ''}: {r[key]}"
            for r in report["results"] for key in ("error", "eval_error") if key in r]


def render_markdown(report: dict[str, Any]) -> str:
    header, rows = result_table(report)
    parts = ["# Latency report", "", *[f"- {line}" for line in environment_lines(report)], "",
             md_table(header, rows), ""]
    errors = _errors(report)
    if errors:
        parts += ["## Failed cells", "", *[f"- {e}" for e in errors], ""]
    return "\n".join(parts)


def _series(rows: Iterable[dict[str, Any]], metric: str) -> dict[str, list[tuple[int, float, float, float]]]:
    """Measured rows grouped by configuration: name -> [(batch, value, low, high)] sorted by batch.

    For latency the value is the median and (low, high) the min and p95, so the
    plot shows the spread; throughput has no spread (low = high = value).
    """
    out: dict[str, list[tuple[int, float, float, float]]] = {}
    for r in rows:
        if "error" in r:
            continue
        lat = r["latency_ms"]
        point = ((lat["median"], lat["min"], lat["p95"]) if metric == "median"
                 else (r["throughput_ips"],) * 3)
        out.setdefault(config_name(r), []).append((int(r["batch"]), *map(float, point)))
    return {k: sorted(v) for k, v in out.items()}


def _batch_axis(ax: Any, batches: Iterable[int]) -> None:
    """Log2 batch axis labelled with the measured batch sizes themselves (1, 8, 32, not 2^k)."""
    ticks = sorted(set(batches))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("batch size")


def _png_base64(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot() -> Any:
    """matplotlib with a file-only backend, or None where it is missing (many Jetson images)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_report(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, base64 PNG) for median latency vs batch and throughput vs batch."""
    plt = _pyplot()
    if plt is None:
        return []
    pngs = []
    for metric, title, ylabel in (("median", "Median latency vs batch (bars: min to p95)", "latency (ms)"),
                                  ("throughput", "Throughput vs batch", "images / s")):
        series = _series(report["results"], metric)
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name, points in series.items():
            b, v, lo, hi = (list(c) for c in zip(*points))
            ax.errorbar(b, v, yerr=[[x - y for x, y in zip(v, lo)], [y - x for x, y in zip(v, hi)]],
                        marker="o", capsize=3, label=name)
        _batch_axis(ax, (p[0] for pts in series.values() for p in pts))
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        pngs.append((title, _png_base64(fig)))
        plt.close(fig)
    return pngs


def _html_page(title: str, intro: list[str], tables: list[tuple[list[str], list[list[str]]]],
               pngs: list[tuple[str, str]], notes: list[str]) -> str:
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>", "<ul>", *[f"<li>{esc(line)}</li>" for line in intro], "</ul>"]
    for header, rows in tables:
        body.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        body += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
        body.append("</table>")
    if pngs:
        body += [f'<figure><img alt="{esc(t)}" src="data:image/png;base64,{b}"><figcaption>{esc(t)}'
                 f"</figcaption></figure>" for t, b in pngs]
    else:
        body.append("<p>No plots: matplotlib is not installed here, or nothing was measured.</p>")
    if notes:
        body += ["<h2>Notes</h2>", "<ul>", *[f"<li>{esc(n)}</li>" for n in notes], "</ul>"]
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #bbb;padding:3px 7px;text-align:right}"
             "th{background:#eee}figure{display:inline-block;margin:1em}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def render_html(report: dict[str, Any]) -> str:
    """A self-contained page (plots embedded as PNG data URIs) that opens directly."""
    return _html_page("Latency report", environment_lines(report), [result_table(report)],
                      plot_report(report), [f"failed: {e}" for e in _errors(report)])


def write_report(report: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """Write report.json, report.md and report.html into ``out_dir`` (atomically each)."""
    out = Path(out_dir)
    bench_report.validate_report(report, str(out / "report.json"))
    return [
        bench_report.write_json(report, out / "report.json"),
        bench_report.write_text_atomic(render_markdown(report), out / "report.md"),
        bench_report.write_text_atomic(render_html(report), out / "report.html"),
    ]


def compare_table(comparison: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    names, keys = comparison["names"], [*comparison["match"], "batch"]
    partial = len(comparison["match"]) < len(bench_report.CONFIG_KEYS)  # cells must say which configuration
    header = list(keys)
    for i, n in enumerate(names):
        tag = " (baseline)" if i == comparison["baseline"] else ""
        header += ([f"{n} config"] if partial else []) + [f"{n}{tag} median ms", f"{n} images/s", f"{n} speedup"]
    rows = []
    for row in comparison["rows"]:
        cells = [str(row[k]) for k in keys]
        for c in row["reports"]:
            cells += ["-"] * (3 + partial) if c is None else ([c["config"]] if partial else []) + [
                _fmt(c["median_ms"]), _fmt(c["throughput_ips"], 1),
                f"{c['speedup']:.2f}x" if c.get("speedup") is not None else "-"]
        rows.append(cells)
    return header, rows


def plot_comparison(comparison: dict[str, Any]) -> list[tuple[str, str]]:
    """Median latency vs batch, one line per (report, configuration)."""
    plt = _pyplot()
    if plt is None or not comparison["rows"]:
        return []
    fig, ax = plt.subplots(figsize=(8, 4.8))
    styles = ["-", "--", ":", "-."]
    series: dict[tuple[int, str], list[tuple[int, float]]] = {}
    for r in comparison["rows"]:
        for i, cell in enumerate(r["reports"]):
            if cell is not None:
                series.setdefault((i, cell["config"]), []).append((r["batch"], cell["median_ms"]))
    colours = {cfg: f"C{j % 10}" for j, cfg in enumerate(sorted({c for _, c in series}))}
    for (i, cfg), pts in sorted(series.items()):
        pts.sort()
        ax.plot([b for b, _ in pts], [m for _, m in pts], styles[i % len(styles)], marker="o",
                color=colours[cfg], label=f"{comparison['names'][i]}: {cfg}")
    _batch_axis(ax, (r["batch"] for r in comparison["rows"]))
    ax.set_yscale("log")
    ax.set_ylabel("median latency (ms)")
    ax.set_title("Median latency across reports (colour: configuration, line style: report)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    png = _png_base64(fig)
    plt.close(fig)
    return [("Median latency across reports", png)]


def _comparison_intro(comparison: dict[str, Any], reports: Sequence[dict[str, Any]]) -> list[str]:
    """The baseline and matching rule, then each report's environment in one line."""
    intro = [f"baseline: {comparison['names'][comparison['baseline']]}; speedup = baseline median / median; "
             f"rows matched on {', '.join([*comparison['match'], 'batch'])}"]
    return intro + [f"{n}: " + " | ".join(environment_lines(r)[1:3]) for n, r in zip(comparison["names"], reports)]


def render_comparison_markdown(comparison: dict[str, Any], reports: Sequence[dict[str, Any]]) -> str:
    header, rows = compare_table(comparison)
    return "\n".join(["# Latency comparison", "", *[f"- {x}" for x in _comparison_intro(comparison, reports)], "",
                      md_table(header, rows), ""])


def render_comparison_html(comparison: dict[str, Any], reports: Sequence[dict[str, Any]]) -> str:
    return _html_page("Latency comparison", _comparison_intro(comparison, reports), [compare_table(comparison)],
                      plot_comparison(comparison), [])
