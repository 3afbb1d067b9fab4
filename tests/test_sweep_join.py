"""benchmarks/sweep_join.py: one front over sweeps measured on different runtimes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

SETTINGS = {"method": "augkd", "preset": "quick", "seed": 0, "config_sha256": None, "distill_args": [],
            "device": "cpu", "batch": 1, "threads": 1, "warmup": 10, "iters": 100, "latency_budget_ms": 0.5}


def _doc(backend: str, rows: list[tuple[str, str, float, float]], **settings: Any) -> dict[str, Any]:
    candidates = [{"id": f"{s}-{p}", "student": s, "precision": p, "backend": backend, "batch": 1, "status": "ok",
                   "reason": None, "top1": top1, "latency_ms": {"median": ms, "p90": ms, "p99": ms},
                   "params": 1, "model_bytes": 1, "pareto": False, "chosen": False} for s, p, top1, ms in rows]
    return {"schema": 1, "kind": "augkd-edge/sweep", "command": f"augkd-edge sweep --backend {backend}",
            "settings": dict(SETTINGS, backend=backend, **settings), "candidates": candidates}


def _run(tmp_path: Path, *docs: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    paths = []
    for i, doc in enumerate(docs):
        paths.append(tmp_path / f"s{i}.json")
        paths[-1].write_text(json.dumps(doc))
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sweep_join.py"), *map(str, paths),
                           "--latency-budget-ms", "0.5", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)


def test_front_and_choice_span_both_runtimes(tmp_path: Path) -> None:
    ort = _doc("ort", [("a", "fp32", 0.90, 0.20), ("b", "int8", 0.95, 0.80)])
    ov = _doc("openvino", [("a", "fp32", 0.90, 0.30), ("b", "int8", 0.95, 0.40)])
    proc = _run(tmp_path, ort, ov)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "out" / "sweep.json").read_text())
    flags = {e["id"]: (e["pareto"], e["chosen"]) for e in doc["candidates"]}
    # b on OpenVINO beats b on ORT (same top-1, faster); a on ORT beats a on OpenVINO.
    assert flags == {"a-fp32@ort": (True, False), "b-int8@ort": (False, False),
                     "a-fp32@openvino": (False, False), "b-int8@openvino": (True, True)}
    assert "b int8 on openvino" in doc["choice"]["message"]
    assert (tmp_path / "out" / "sweep.png").stat().st_size > 0
    assert "| b | int8 | openvino | 1 | 0.9500 | 0.400 |" in (tmp_path / "out" / "sweep.md").read_text()


def test_sweeps_with_other_settings_are_refused(tmp_path: Path) -> None:
    proc = _run(tmp_path, _doc("ort", [("a", "fp32", 0.9, 0.2)]),
                _doc("openvino", [("a", "fp32", 0.9, 0.2)], threads=2))
    assert proc.returncode == 2 and "threads" in proc.stderr and "Traceback" not in proc.stderr
