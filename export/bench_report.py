"""Latency reports: the versioned JSON schema, building, validating, reading and writing them.

Rendering (Markdown / HTML / plots) is ``bench_render.py``; lining reports up
across machines or builds is ``bench_compare.py``. Torch-free (standard library
+ numpy) so the Jetson runner writes the same report on a board as
``augkd-edge bench`` on a workstation, and ``augkd-edge bench compare`` can put
them side by side.

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

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

if __package__:
    from . import latency
    from .atomic import write_text_atomic
else:  # loose copy on a board (docs/jetson.md): the sibling files sit next to this one
    import latency  # type: ignore[no-redef]
    from atomic import write_text_atomic  # type: ignore[no-redef]

try:  # inside the augkd_edge package, an unreadable report is a user error
    from augkd_edge.errors import UserError as _ReportErrorBase
except ImportError:  # loose copy on a board
    _ReportErrorBase = ValueError  # type: ignore[assignment,misc]

SCHEMA = 1
KIND = "augkd-edge/bench"
COMPARE_KIND = "augkd-edge/bench-compare"
STAT_KEYS = ("min", "mean", "std", "median", "p90", "p95", "p99", "max")
CONFIG_KEYS = ("model", "backend", "device", "precision")  # what a measured configuration is
ROW_KEYS = (*CONFIG_KEYS, "batch")


class ReportError(_ReportErrorBase):
    """A report file that cannot be read (a UserError inside the package)."""


def build_report(results: list[dict[str, Any]], environment: dict[str, Any],
                 settings: dict[str, Any], tool: str, version: str) -> dict[str, Any]:
    """Assemble a schema-1 report from ``latency.run_grid`` rows and ``envinfo.capture``."""
    from_latency = {"percentile_method": latency.PERCENTILE_METHOD, "std_ddof": latency.STD_DDOF}
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


def report_name(report: dict[str, Any], fallback: str) -> str:
    return report.get("environment", {}).get("label") or fallback


def write_json(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """A report or comparison as indented JSON, atomically."""
    return write_text_atomic(json.dumps(obj, indent=2) + "\n", path)
