"""Which candidates are worth shipping: the Pareto front, the latency-budget choice,
and latencies taken from a bench report made on the target.

Pure functions over the sweep's candidate entries (plain dicts, see
``augkd_edge.sweep``), so the decision rules are testable with hand-made entries
and the same rules apply whether the latencies were measured here or on a board.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable

from augkd_edge.errors import UserError

# Row fields a bench report row may carry the measured model file's sha256 in. Schema 1 of the bench
# report does not record one today (rows name the file only), so these are for reports that add it.
HASH_KEYS = ("sha256", "model_sha256", "onnx_sha256", "engine_sha256")


def measured(entry: dict[str, Any]) -> bool:
    """True for an entry the decisions can use: finished, with an accuracy and a median latency."""
    latency = entry.get("latency_ms") or {}
    return entry.get("status") == "ok" and entry.get("top1") is not None and latency.get("median") is not None


def pareto_ids(entries: Iterable[dict[str, Any]]) -> set[str]:
    """Ids of the measured entries that no other entry beats on both accuracy and median latency.

    An entry is dominated when another one is at least as accurate and at least as fast, and
    strictly better in one of the two; equal entries dominate neither, so both stay on the front.
    """
    points = [(e["id"], float(e["top1"]), float(e["latency_ms"]["median"])) for e in entries if measured(e)]
    front = set()
    for ident, top1, ms in points:
        if not any(t >= top1 and m <= ms and (t > top1 or m < ms) for _, t, m in points):
            front.add(ident)
    return front


@dataclasses.dataclass
class Choice:
    """The outcome of ``--latency-budget-ms``: the chosen id (or None) and the one line that says why."""

    chosen: str | None
    message: str


def _describe(entry: dict[str, Any], with_backend: bool = False) -> str:
    """A candidate in the words of the budget line: name, precision (and runtime, when the entries span
    several, as in ``benchmarks/sweep_join.py``) and both numbers."""
    runtime = f" on {entry['backend']}" if with_backend else ""
    return (f"{entry['student']} {entry['precision']}{runtime} (top-1 {entry['top1']:.4f}, median "
            f"{entry['latency_ms']['median']:.3f} ms)")


def choose(entries: list[dict[str, Any]], budget_ms: float) -> Choice:
    """The most accurate measured entry whose median latency is within the budget.

    Ties in accuracy go to the faster one. When nothing fits, the message names the fastest
    entry: it is the one closest to the budget, so the user knows how far off the budget is.
    """
    usable = [e for e in entries if measured(e)]
    if not usable:
        return Choice(None, f"no candidate has both an accuracy and a latency to hold against the budget "
                            f"of {budget_ms:g} ms; see why in the candidates' reasons.")
    several = len({e.get("backend") for e in usable}) > 1
    fitting = [e for e in usable if e["latency_ms"]["median"] <= budget_ms]
    if fitting:
        best = max(fitting, key=lambda e: (e["top1"], -e["latency_ms"]["median"]))
        return Choice(best["id"], f"chosen for the {budget_ms:g} ms budget: {_describe(best, several)}, the most "
                                  f"accurate of {len(fitting)} candidate(s) within it.")
    fastest = min(usable, key=lambda e: e["latency_ms"]["median"])
    return Choice(None, f"no candidate fits the {budget_ms:g} ms budget; the closest is "
                        f"{_describe(fastest, several)}.")


def mark(entries: list[dict[str, Any]], budget_ms: float | None) -> Choice | None:
    """Set every entry's ``pareto`` and ``chosen`` flags in place; the budget's Choice when one is given."""
    front = pareto_ids(entries)
    choice = choose(entries, budget_ms) if budget_ms is not None else None
    for entry in entries:
        entry["pareto"] = entry["id"] in front
        entry["chosen"] = choice is not None and entry["id"] == choice.chosen
    return choice


def load_bench_report(path: Path) -> dict[str, Any]:
    """A bench ``report.json`` (a file, or the folder holding it), checked enough to match rows against.

    Own minimal reader rather than the bench module's: the sweep depends only on the report's
    public schema, which is what a board's torch-free runner writes too.
    """
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise UserError(f"--latency-from {path}: no such file; give the report.json that `augkd-edge bench` "
                        f"or export/trt_runner.py wrote on the target.")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"--latency-from {path}: not JSON ({exc}); give a bench report.json.") from None
    if not isinstance(report, dict) or not isinstance(report.get("results"), list):
        raise UserError(f"--latency-from {path}: no 'results' list; give a bench report.json (schema 1).")
    schema = report.get("schema")
    if not isinstance(schema, int) or schema > 1:
        raise UserError(f"--latency-from {path}: bench report schema {schema!r}; this augkd-edge reads schema 1, "
                        f"upgrade augkd-edge.")
    return report


def _rows_for(entry: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[list, str, str]:
    """(matching rows, how they matched, why not) for one entry: by file hash first, then by file name.

    Names match on the stem, so ``resnet18-int8.engine`` built on a board from the sweep's
    ``models/resnet18-int8.onnx`` counts as that candidate's row.
    """
    hashes = {h for h in (entry.get("model_sha256"), entry.get("engine_sha256")) if h}
    by_hash = [r for r in rows if hashes & {r.get(k) for k in HASH_KEYS}]
    if by_hash:
        return by_hash, "sha256", ""
    stem = Path(entry.get("model_file") or "").stem
    by_name = [r for r in rows if Path(str(r.get("model", ""))).stem == stem]
    if by_name:
        return by_name, "name", ""
    return [], "", f"no row at the sweep's batch has its sha256 or a model named {stem}.*; benchmark the sweep's " \
                   f"models/ files (or engines built from them, same name) on the target"


def apply_report(entries: list[dict[str, Any]], report: dict[str, Any], source: str, batch: int,
                 backend: str) -> list[dict[str, str]]:
    """Replace every finished entry's latency with the report's row for its model at ``batch``.

    Entries without a row get no latency (not this machine's: a choice must not mix machines)
    and are returned as ``{"id", "reason"}`` so the outputs can list them. Among several rows
    of one model (several backends), the one of ``backend`` wins.
    """
    rows = [r for r in report["results"] if "error" not in r and r.get("batch") == batch and r.get("latency_ms")]
    unmatched = []
    for entry in entries:
        if entry.get("status") != "ok":
            continue
        found, how, why = _rows_for(entry, rows)
        if not found:
            entry["latency_ms"] = None
            entry["latency_source"] = {"from": source, "matched_by": None, "reason": f"unmatched: {why}"}
            unmatched.append({"id": entry["id"], "reason": why})
            continue
        row = next((r for r in found if r.get("backend") == backend), found[0])
        entry["latency_ms"] = {k: float(row["latency_ms"][k]) for k in ("median", "p90", "p99")}
        entry["backend"] = row.get("backend", entry["backend"])
        entry["latency_source"] = {"from": source, "matched_by": how, "row_model": row.get("model"),
                                   "device": row.get("device"), "precision": row.get("precision")}
    return unmatched
