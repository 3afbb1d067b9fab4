"""Latency reports: the versioned JSON schema, Markdown / HTML renderings, and
comparisons across machines or builds.

Torch-free (standard library + numpy; matplotlib only for the HTML plots) so the
Jetson runner writes the same report on a board as ``augkd-edge bench`` on a
workstation, and ``augkd-edge bench compare`` can put them side by side.

``report.json``, schema 1::

    {
      "schema": 1,
      "kind": "augkd-edge/bench",
      "created": "2026-11-26T17:00:00Z",          # UTC, ISO 8601
      "tool": {"name": "augkd-edge bench" | "trt_runner", "version": "0.1.0"},
      "environment": {                            # export/envinfo.py; no hostnames
        "label": "rtx4090-ws" | null, "os": ..., "arch": ..., "python": ...,
        "cpu": {"model", "logical_cores", "physical_cores", "usable_cores"},
        "gpus": [{"name", "driver", "compute_capability", "memory_total_mb"}],
        "jetson": {"board", "l4t"} | null,
        "libraries": {"numpy": "2.4.6", "onnxruntime": ..., ...},
        "threads": {"OMP_NUM_THREADS": ..., "torch_threads": 2, ...}
      },
      "settings": {"warmup": 10, "iters": 100 | null, "seconds": null | 5.0,
                   "percentile_method": "linear", "std_ddof": 1},
      "results": [                                # one row per (model, backend, batch)
        {"model": "student.onnx", "backend": "torch" | "ort" | "trt",
         "device": "cpu" | "cuda", "precision": "fp32" | "fp16" | "int8-qdq" | ...,
         "batch": 8, "input_shape": [8, 3, 32, 32],
         "samples": 100, "timing": "host-sync" | "cuda-events",
         "latency_ms": {"min", "mean", "std", "median", "p90", "p95", "p99", "max"},
         "throughput_ips": 1234.5,                # batch / mean latency
         "memory_mb": {"host_peak_rss", "host_peak_kind": "vmhwm" | "rss-after",
                       "device_peak", "device_kind"},
         "top1": 0.91, "eval": {"split": "test", "n": 1000},   # only with --eval
         "eval_error": "...",                     # --eval failed for this cell (latency kept)
         "error": "..."                           # only when the cell failed; no numbers then
         ... backend-specific extras (threads, cuda_graphs, engine info)}
      ]
    }

A reader must refuse a schema newer than it knows (``load_report`` does); new
optional fields may appear within a schema version, so readers ignore unknown
keys. ``compare.json`` (kind ``augkd-edge/bench-compare``) holds the compared
reports' labels, the baseline index, the fields rows were matched on (``match``)
and one row per match key and batch with each report's configuration, median
latency, throughput and speedup against the baseline.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

try:  # inside the augkd_edge package
    from augkd_edge.checkpoint import write_text_atomic
    from augkd_edge.errors import UserError as _ReportErrorBase
except ImportError:  # copied to a board as loose files (docs/jetson.md)
    _ReportErrorBase = ValueError  # type: ignore[assignment,misc]

    def write_text_atomic(text: str, path: str | os.PathLike) -> Path:  # type: ignore[misc]
        """Stand-in for augkd_edge.checkpoint.write_text_atomic: temp file + rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a report is meant to be read by others
        os.replace(tmp, path)
        return path

SCHEMA = 1
KIND = "augkd-edge/bench"
COMPARE_KIND = "augkd-edge/bench-compare"
STAT_KEYS = ("min", "mean", "std", "median", "p90", "p95", "p99", "max")
ROW_KEYS = ("model", "backend", "device", "precision", "batch")


class ReportError(_ReportErrorBase):
    """A report file that cannot be read (a UserError inside the package)."""


def build_report(results: list[dict[str, Any]], environment: dict[str, Any],
                 settings: dict[str, Any], tool: str, version: str) -> dict[str, Any]:
    """Assemble a schema-1 report from ``latency.run_grid`` rows and ``envinfo.capture``."""
    from_latency = {"percentile_method": "linear", "std_ddof": 1}
    return {
        "schema": SCHEMA,
        "kind": KIND,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "tool": {"name": tool, "version": version},
        "environment": environment,
        "settings": {**settings, **from_latency},
        "results": results,
    }


def validate_report(report: Any, source: str = "<report>") -> dict[str, Any]:
    """Check the parts every reader relies on; the message names the file and what is wrong."""
    if not isinstance(report, dict) or report.get("kind") != KIND:
        raise ReportError(f"{source}: not an augkd-edge latency report (no 'kind': '{KIND}').")
    schema = report.get("schema")
    if not isinstance(schema, int) or schema > SCHEMA:
        raise ReportError(
            f"{source}: report schema {schema!r} is newer than this reader understands "
            f"(<= {SCHEMA}); upgrade augkd-edge."
        )
    results = report.get("results")
    if not isinstance(results, list):
        raise ReportError(f"{source}: 'results' must be a list of rows.")
    for i, row in enumerate(results):
        missing = [k for k in ROW_KEYS if k not in row]
        if "error" not in row:
            missing += [k for k in ("latency_ms", "throughput_ips") if k not in row]
            missing += [f"latency_ms.{k}" for k in STAT_KEYS if k not in row.get("latency_ms", {})]
        if missing:
            raise ReportError(f"{source}: results[{i}] lacks {', '.join(missing)}.")
    return report


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a ``report.json``."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{path}: cannot read the report ({exc.strerror}); give a report.json or its folder.") from exc
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}).") from exc
    return validate_report(report, str(path))


# -- rendering ---------------------------------------------------------------

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


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


def _errors(report: dict[str, Any]) -> list[str]:
    return [f"{config_name(r)} batch {r['batch']}{' (eval)' if key == 'eval_error' else ''}: {r[key]}"
            for r in report["results"] for key in ("error", "eval_error") if key in r]


def render_markdown(report: dict[str, Any]) -> str:
    header, rows = result_table(report)
    parts = ["# Latency report", "", *[f"- {line}" for line in environment_lines(report)], "",
             _md_table(header, rows), ""]
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
    validate_report(report, str(out / "report.json"))
    return [
        write_text_atomic(json.dumps(report, indent=2) + "\n", out / "report.json"),
        write_text_atomic(render_markdown(report), out / "report.md"),
        write_text_atomic(render_html(report), out / "report.html"),
    ]


# -- comparison ----------------------------------------------------------------

def report_name(report: dict[str, Any], fallback: str) -> str:
    return report.get("environment", {}).get("label") or fallback


CONFIG_KEYS = ("model", "backend", "device", "precision")


def compare(reports: Sequence[dict[str, Any]], names: Sequence[str], baseline: int = 0,
            match: Sequence[str] = CONFIG_KEYS) -> dict[str, Any]:
    """Line up several reports row by row and give each report's speedup against ``baseline``
    (baseline median / median, so > 1 means faster than the baseline).

    Rows are matched on ``batch`` plus the ``match`` fields (model *file name*, so the
    same file measured on two machines lines up). Fewer fields compare different
    builds: ``match=()`` puts a board's ``student.engine`` (trt, fp16) next to a
    workstation's ``student.onnx`` (ort, fp32) at each batch size; each cell then
    names the configuration it came from.
    """
    if not 0 <= baseline < len(reports):
        raise ReportError(f"--baseline {baseline} is out of range: give 0..{len(reports) - 1} "
                          f"(the position of a report on the command line).")
    unknown = sorted(set(match) - set(CONFIG_KEYS))
    if unknown:
        raise ReportError(f"--match {','.join(unknown)}: unknown field; choose from {', '.join(CONFIG_KEYS)}.")
    match = [k for k in CONFIG_KEYS if k in match]

    def field(row: dict[str, Any], key: str) -> str:
        return Path(row[key]).name if key == "model" else str(row[key])

    table: dict[tuple, list[dict[str, Any] | None]] = {}
    for i, report in enumerate(reports):
        for r in report["results"]:
            if "error" in r:
                continue
            key = (*(field(r, k) for k in match), int(r["batch"]))
            cells = table.setdefault(key, [None] * len(reports))
            config = " ".join(field(r, k) for k in CONFIG_KEYS)
            if cells[i] is not None:
                raise ReportError(
                    f"{names[i]}: two rows match the same entry ({cells[i]['config']} and {config}, batch "
                    f"{r['batch']}); match on more fields (--match) or compare a report of one configuration.")
            cells[i] = {"config": config, "median_ms": r["latency_ms"]["median"],
                        "throughput_ips": r["throughput_ips"], "top1": r.get("top1")}
    rows = []
    for key in sorted(table):
        cells = table[key]
        base = cells[baseline]
        for cell in cells:
            if cell is not None:
                cell["speedup"] = base["median_ms"] / cell["median_ms"] if base and cell["median_ms"] > 0 else None
        rows.append({**dict(zip([*match, "batch"], key)), "reports": cells})
    return {"schema": SCHEMA, "kind": COMPARE_KIND, "names": list(names), "baseline": baseline,
            "match": match, "rows": rows}


def compare_table(comparison: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    names, keys = comparison["names"], [*comparison["match"], "batch"]
    partial = len(comparison["match"]) < len(CONFIG_KEYS)  # cells must say which configuration
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


def write_comparison(comparison: dict[str, Any], reports: Sequence[dict[str, Any]],
                     out_dir: str | os.PathLike) -> list[Path]:
    """compare.json, compare.md and compare.html (with each report's environment)."""
    out = Path(out_dir)
    header, rows = compare_table(comparison)
    intro = [f"baseline: {comparison['names'][comparison['baseline']]}; speedup = baseline median / median; "
             f"rows matched on {', '.join([*comparison['match'], 'batch'])}"]
    envs = [f"{n}: " + " | ".join(environment_lines(r)[1:3]) for n, r in zip(comparison["names"], reports)]
    md = "\n".join(["# Latency comparison", "", *[f"- {x}" for x in intro + envs], "",
                    _md_table(header, rows), ""])
    page = _html_page("Latency comparison", intro + envs, [(header, rows)], plot_comparison(comparison), [])
    return [
        write_text_atomic(json.dumps(comparison, indent=2) + "\n", out / "compare.json"),
        write_text_atomic(md, out / "compare.md"),
        write_text_atomic(page, out / "compare.html"),
    ]
