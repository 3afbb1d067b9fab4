"""One Pareto front over sweeps of the same students on different runtimes.

``augkd-edge sweep`` measures one latency backend per folder (its resume fingerprint pins the
backend), so "ONNX Runtime or OpenVINO?" is answered by two sweeps over the same distilled runs
(copy ``runs/`` from the first folder into the second: nothing is retrained). This script joins
their ``sweep.json`` files, re-decides the front and the budget with the sweep's own rules
(``augkd_edge.sweep.select``) over every student x precision x backend, and writes the joined
``sweep.json`` / ``sweep.md`` / ``sweep.png`` with the sweep's own renderer.

    python benchmarks/sweep_join.py OUT_ORT/sweep.json OUT_OV/sweep.json --latency-budget-ms 0.5 --out DIR

Latencies are only comparable when the sweeps ran on one machine with the same batch, threads and
iterations; the script refuses sweeps whose settings differ in anything but the backend.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from augkd_edge.sweep import records, render, select

# Settings that must agree for latencies and accuracies to be compared across the joined sweeps.
SAME = ("method", "preset", "seed", "config_sha256", "distill_args", "device", "batch", "threads", "warmup", "iters")


def join(docs: list[dict[str, Any]], budget_ms: float | None) -> dict[str, Any]:
    """A sweep document over the candidates of every doc, ids suffixed with the backend."""
    first = docs[0]["settings"]
    for doc in docs[1:]:
        diff = [k for k in SAME if doc["settings"].get(k) != first.get(k)]
        if diff:
            raise ValueError(f"sweeps differ in {', '.join(diff)}: their numbers cannot share one front")
    backends = [doc["settings"]["backend"] for doc in docs]
    if len(set(backends)) != len(backends):
        raise ValueError(f"each sweep must measure another backend, got {backends}")
    entries = [dict(entry, id=f"{entry['id']}@{entry['backend']}") for doc in docs for entry in doc["candidates"]]
    choice = select.mark(entries, budget_ms)  # sets every entry's pareto / chosen flags
    settings = dict(first, backend="+".join(backends), latency_budget_ms=budget_ms)
    doc = records.document(settings, " ; ".join(d["command"] for d in docs), docs[0].get("machine") or {}, entries,
                           None if choice is None else choice.message, unmatched=[], latency_from=None)
    doc["joined_from"] = [d["command"] for d in docs]
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="sweep.json files, one per backend")
    parser.add_argument("--latency-budget-ms", type=float, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        docs = [json.loads(p.read_text(encoding="utf-8")) for p in args.sweeps]
        doc = join(docs, args.latency_budget_ms)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (args.out / "sweep.md").write_text(render.markdown(doc), encoding="utf-8")
    png = render.plot_png(doc)
    if png is not None:
        (args.out / "sweep.png").write_bytes(png)
    print(render.markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
