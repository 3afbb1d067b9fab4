"""Where a sweep keeps its files, the per-candidate records that make it resumable,
and the ``sweep.json`` document built from them.

A candidate is finished once ``candidates/<student>-<precision>.json`` exists: it is
written atomically (temp file + rename) as the candidate's last step, so an
interrupted sweep either has the whole record or none, and a rerun redoes only
candidates without one.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from augkd_edge.checkpoint import write_text_atomic
from augkd_edge.errors import UserError

SCHEMA = 1
KIND = "augkd-edge/sweep"
PRECISIONS = ("fp32", "int8")
# Settings that change a candidate's numbers: a resumed sweep must use the same ones.
FINGERPRINT_KEYS = ("method", "preset", "seed", "config_sha256", "distill_args", "export_args", "backend",
                    "device", "batch", "threads", "warmup", "iters")


def candidate_id(student: str, precision: str) -> str:
    """The name a candidate's files carry; unique per sweep, so a board's report can be matched by it."""
    return f"{student}-{precision}"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Paths of one sweep folder (``--out``)."""

    out: Path

    def run_dir(self, student: str) -> Path:
        """The distill run, shared by the student's precisions."""
        return self.out / "runs" / student

    def export_dir(self, ident: str) -> Path:
        """export's --out for one candidate (its export.json and ONNX files)."""
        return self.out / "exports" / ident

    def bench_dir(self, ident: str) -> Path:
        """bench's --out for one candidate: this machine's latency report."""
        return self.out / "bench" / ident

    def model_copy(self, ident: str, suffix: str) -> Path:
        """The exported model under a unique name: what to copy to a board for ``--latency-from``."""
        return self.out / "models" / f"{ident}{suffix}"

    def record(self, ident: str) -> Path:
        """The finished-candidate record whose existence makes a rerun skip it."""
        return self.out / "candidates" / f"{ident}.json"

    def log(self, name: str) -> Path:
        """One child command's output (appended to on a rerun, so an interrupted attempt stays readable)."""
        return self.out / "logs" / f"{name}.log"


def fingerprint(settings: dict[str, Any]) -> dict[str, Any]:
    """The part of the settings a finished candidate's numbers depend on."""
    return {key: settings.get(key) for key in FINGERPRINT_KEYS}


def read_record(layout: Layout, ident: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The finished candidate's record, or None; refuses one made with other settings.

    Mixing candidates trained or measured under different settings would make the
    comparison meaningless, so a changed setting is a user error, not a silent redo.
    """
    path = layout.record(ident)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: not a readable candidate record; delete it to redo {ident}.") from None
    if record.get("schema", 0) > SCHEMA:
        raise UserError(f"{path}: candidate record schema {record.get('schema')}; upgrade augkd-edge.")
    old, new = record.get("fingerprint", {}), fingerprint(settings)
    differ = [k for k in FINGERPRINT_KEYS if old.get(k) != new.get(k)]
    if differ:
        raise UserError(f"{layout.out} holds a sweep made with other settings ({', '.join(differ)} differ, e.g. "
                        f"{differ[0]} {old.get(differ[0])!r} -> {new.get(differ[0])!r}); use another --out or the "
                        f"same settings.")
    return record


def write_record(layout: Layout, record: dict[str, Any], settings: dict[str, Any]) -> Path:
    """Mark a candidate finished (succeeded or failed) in one atomic write."""
    record = {"schema": SCHEMA, **record, "fingerprint": fingerprint(settings),
              "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return write_text_atomic(json.dumps(record, indent=2) + "\n", layout.record(record["id"]))


def machine(bench_reports: list[Path]) -> dict[str, Any]:
    """Where the local latencies were measured: the first local bench report's environment (no hostname)."""
    for path in bench_reports:
        try:
            return json.loads(path.read_text(encoding="utf-8"))["environment"]
        except (OSError, ValueError, KeyError):
            continue
    return {"os": platform.platform(), "arch": platform.machine(), "python": platform.python_version()}


ENTRY_KEYS = ("id", "student", "precision", "backend", "device", "batch", "status", "reason", "top1",
              "top1_source", "latency_ms", "latency_source", "params", "model_bytes", "model_file", "model_sha256",
              "engine_sha256", "run_dir", "export_dir", "logs")


def entry_from(record: dict[str, Any]) -> dict[str, Any]:
    """A sweep.json entry from a candidate record (flags are set later by ``select.mark``).

    Top-1 is rounded to 6 decimals (a test split of n images moves it in steps of 1/n): FP32's comes
    from PyTorch in float32 and INT8's from ONNX Runtime in float64, and the same count of correct
    images must compare equal, not 2e-8 apart, for the Pareto front and the budget's tie-break.
    """
    entry = {key: record.get(key) for key in ENTRY_KEYS}
    if entry["top1"] is not None:
        entry["top1"] = round(float(entry["top1"]), 6)
    entry.update(pareto=False, chosen=False)
    return entry


def document(settings: dict[str, Any], command: str, machine_info: dict[str, Any], entries: list[dict[str, Any]],
             choice_line: str | None, unmatched: list[dict[str, str]],
             latency_from: dict[str, Any] | None) -> dict[str, Any]:
    """The ``sweep.json`` document (schema 1, see ``augkd_edge.sweep``)."""
    return {
        "schema": SCHEMA,
        "kind": KIND,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "settings": settings,
        "machine": machine_info,
        "latency_from": latency_from,
        "candidates": entries,
        "choice": None if choice_line is None else {
            "budget_ms": settings.get("latency_budget_ms"),
            "chosen": next((e["id"] for e in entries if e["chosen"]), None),
            "message": choice_line,
        },
        "unmatched": unmatched,
        "failed": [{"id": e["id"], "reason": e["reason"]} for e in entries if e["status"] != "ok"],
    }
