"""The sweep from start to outputs: every pending candidate through its chain, then
``sweep.json`` / ``sweep.md`` / ``sweep.html`` / ``sweep.png`` from the records.

Finished candidates (a record under ``candidates/``) are read back, not redone; a
failed candidate is recorded with its reason and the sweep goes on; the outputs
are rebuilt from all records on every call, so a rerun with another
``--latency-budget-ms`` or ``--latency-from`` only re-decides.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from augkd_edge.export.atomic import write_bytes_atomic, write_text_atomic
from augkd_edge.sweep import records, render, select
from augkd_edge.sweep.records import Layout, candidate_id
from augkd_edge.sweep.runner import Plan, StepFailed, distill, failed_record, run_candidate

Say = Callable[[str], None]


def _pending(plan: Plan, settings: dict[str, Any], students: list[str], precisions: list[str],
             retry_failed: bool) -> list[tuple[str, str]]:
    """(student, precision) pairs without a usable record, in the order they will run."""
    todo = []
    for student in students:
        for precision in precisions:
            record = records.read_record(plan.layout, candidate_id(student, precision), settings)
            if record is None or (retry_failed and record.get("status") != "ok"):
                todo.append((student, precision))
    return todo


def _one_line(record: dict[str, Any]) -> str:
    """What the sweep prints when a candidate is done: its numbers, or FAILED and why."""
    if record["status"] != "ok":
        return f"{record['id']}: FAILED: {record['reason']}"
    latency = record.get("latency_ms")
    ms = f"median {latency['median']:.3f} ms" if latency else "no local latency"
    return f"{record['id']}: top-1 {record['top1']:.4f}, {ms}"


def run_all(plan: Plan, settings: dict[str, Any], students: list[str], precisions: list[str],
            retry_failed: bool, say: Say, progress: Callable[[int], Any]) -> int:
    """Run every pending candidate; how many were run. Distill once per student, before its precisions.

    ``progress(total)`` returns a tqdm-like bar (``set_description``, ``update``, ``close``).
    """
    todo = _pending(plan, settings, students, precisions, retry_failed)
    done = len(students) * len(precisions) - len(todo)
    if done:
        say(f"{done} candidate(s) already finished in {plan.layout.out}/candidates: not redone")
    if not todo:
        return 0
    bar = progress(len(todo))
    try:
        run_dirs: dict[str, Path | str] = {}
        for student, precision in todo:
            if student not in run_dirs:
                bar.set_description(f"{student}: distill")
                try:
                    run_dirs[student] = distill(plan, student)
                except StepFailed as exc:
                    run_dirs[student] = str(exc)
            bar.set_description(f"{student}-{precision}: export + bench")
            where = run_dirs[student]
            try:
                if isinstance(where, str):
                    raise StepFailed(where)
                record = run_candidate(plan, where, student, precision)
            except StepFailed as exc:
                record = failed_record(plan, student, precision, str(exc))
            records.write_record(plan.layout, record, settings)
            say(_one_line(record))
            bar.update(1)
    finally:
        bar.close()
    return len(todo)


def _latency_from(entries: list[dict[str, Any]], path: Path | None, settings: dict[str, Any],
                  say: Say) -> tuple[list[dict[str, str]], dict[str, Any] | None]:
    """Apply the target's report to the entries; the unmatched ones and the report's summary for sweep.json."""
    if path is None:
        return [], None
    report = select.load_bench_report(path)
    unmatched = select.apply_report(entries, report, str(path), settings["batch"], settings["backend"])
    matched = sum(1 for e in entries if e["status"] == "ok") - len(unmatched)
    say(f"--latency-from {path}: {matched} candidate(s) matched, {len(unmatched)} unmatched")
    for item in unmatched:
        say(f"  unmatched {item['id']}: {item['reason']}")
    env = report.get("environment") or {}
    return unmatched, {"path": str(path), "label": env.get("label"), "environment": env,
                       "created": report.get("created")}


def write_outputs(layout: Layout, settings: dict[str, Any], command: str, students: list[str],
                  precisions: list[str], latency_from: Path | None, say: Say) -> dict[str, Any]:
    """Build sweep.json from the candidate records of this sweep's lists and write the four outputs."""
    recs = [records.read_record(layout, candidate_id(s, p), settings) for s in students for p in precisions]
    entries = [records.entry_from(r) for r in recs if r is not None]
    local = [Path(e["latency_source"]["report"]) for e in entries
             if isinstance(e.get("latency_source"), dict) and e["latency_source"].get("report")]
    unmatched, source = _latency_from(entries, latency_from, settings, say)
    choice = select.mark(entries, settings.get("latency_budget_ms"))
    doc = records.document(settings, command, records.machine(local), entries,
                           choice.message if choice else None, unmatched, source)
    png = render.plot_png(doc)
    write_text_atomic(json.dumps(doc, indent=2) + "\n", layout.out / "sweep.json")
    write_text_atomic(render.markdown(doc), layout.out / "sweep.md")
    write_text_atomic(render.html_page(doc, png), layout.out / "sweep.html")
    if png is not None:
        write_bytes_atomic(png, layout.out / "sweep.png")
    if choice is not None:
        say(choice.message)
    return doc
