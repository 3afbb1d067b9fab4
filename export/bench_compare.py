"""Latency reports lined up across machines or builds: the comparator behind ``augkd-edge bench compare``.

``compare`` is data in, data out (``compare.json``, kind ``augkd-edge/bench-compare``,
described in ``bench_report.py``); ``write_comparison`` hands it to
``bench_render`` for the Markdown and HTML pages.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from augkd_edge.export import bench_render
from augkd_edge.export.atomic import write_text_atomic
from augkd_edge.export.bench_report import COMPARE_KIND, CONFIG_KEYS, SCHEMA, ReportError, write_json


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


def write_comparison(comparison: dict[str, Any], reports: Sequence[dict[str, Any]],
                     out_dir: str | os.PathLike) -> list[Path]:
    """compare.json, compare.md and compare.html (with each report's environment)."""
    out = Path(out_dir)
    return [
        write_json(comparison, out / "compare.json"),
        write_text_atomic(bench_render.render_comparison_markdown(comparison, reports), out / "compare.md"),
        write_text_atomic(bench_render.render_comparison_html(comparison, reports), out / "compare.html"),
    ]
