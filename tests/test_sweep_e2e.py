"""augkd-edge sweep end to end through the real CLI: real distill (tiny settings), real ONNX
export and INT8 quantization, real ONNX Runtime latency; then a rerun that redoes nothing
and takes latencies from a report, and a sweep stopped by SIGTERM in the middle of a
candidate's export that resumes without redoing the finished ones.

Tiny settings, for CI (2 cores, about 1-2 minutes): a ResNet-18 teacher trained for one epoch
on 300 images (own cache folder), every AuG-KD module for one or two epochs of a few
steps, 16 px inputs, opset 17 (the TorchScript exporter: a few seconds faster per model than
the default 18), 16 calibration images, and ``--max-drop 100`` so the INT8 gate accepts the
near-random tiny students (the gate itself is export's, tested there). ``inception_v3``
cannot run at 16 px: its distill fails, which checks that a failed candidate is recorded
with its reason and the sweep goes on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

TINY_DISTILL = ("--teacher-arch resnet18 --teacher-epochs 1 --teacher-max-images 300 --df-epochs 1 "
                "--df-iters-per-epoch 2 --df-batch-size 8 --df-val-samples 16 --df-k 1 --anchor-epochs 1 "
                "--anchor-batch-size 16 --mixup-epochs 2 --mixup-batch-size 16 --shots 3 --eval-per-class 2 "
                "--device cpu --input-size 16")
STUDENTS = ["shufflenet_v2_x0_5", "mobilenet_v3_small", "inception_v3"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def sweep_cmd(out: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "augkd_edge.cli", "sweep", "--students", ",".join(STUDENTS),
            "--precision", "fp32,int8", "--cache-dir", str(cache), "--distill-args", TINY_DISTILL,
            # --atol 1e-3: these two-epoch 16-pixel students are what the sweep's mechanics need, not models whose
            # ONNX parity is at stake; float32 rounding left the tiny ShuffleNet 2e-5 over the default tolerance
            "--export-args", "--opset 17 --calibration-size 16 --max-drop 100 --atol 1e-3", "--threads", "1",
            "--warmup", "1", "--iters", "10", "--out", str(out), *extra]


def sweep(out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(sweep_cmd(out, cache, *extra), capture_output=True, text=True, env=ENV, timeout=900)


def interrupt_when(cmd: list[str], ready: Callable[[], bool]) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` and send it SIGTERM (what ``timeout`` or a batch system sends) once ``ready()``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 300
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("sweep")
    result = sweep(root / "sw", root / "cache", "--latency-budget-ms", "1000")
    assert result.returncode == 0, result.stdout + result.stderr
    return root / "sw", root / "cache", result


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("*"))}


def test_every_candidate_is_measured_or_failed_with_its_reason(swept) -> None:
    out, _, result = swept
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["schema"] == 1 and doc["kind"] == "augkd-edge/sweep" and doc["command"].startswith("augkd-edge sweep")
    assert doc["settings"]["students"] == STUDENTS and doc["machine"]["cpu"]
    by_id = {e["id"]: e for e in doc["candidates"]}
    assert list(by_id) == [f"{s}-{p}" for s in STUDENTS for p in ("fp32", "int8")]
    for student in STUDENTS[:2]:
        fp32, int8 = by_id[f"{student}-fp32"], by_id[f"{student}-int8"]
        export = json.loads((out / "exports" / f"{student}-int8" / "export.json").read_text())
        assert int8["top1"] == round(export["int8"]["int8_top1"], 6)  # the quantized model's own accuracy
        results = json.loads((out / "runs" / student / "results.json").read_text())
        assert fp32["top1"] == round(results["test"]["top1"], 6)
        for e in (fp32, int8):
            assert e["status"] == "ok" and e["backend"] == "ort" and e["batch"] == 1
            assert 0 < e["latency_ms"]["median"] <= e["latency_ms"]["p90"] <= e["latency_ms"]["p99"]
            assert e["params"] > 100_000 and e["model_bytes"] == Path(e["model_file"]).stat().st_size
        assert int8["model_bytes"] < fp32["model_bytes"] and int8["params"] == fp32["params"]
        log = (out / "logs" / f"{student}-distill.log").read_text()
        assert log.count("$ ") == 1  # one distill per student, shared by its precisions
    for precision in ("fp32", "int8"):
        failed = by_id[f"inception_v3-{precision}"]
        assert failed["status"] == "failed" and failed["latency_ms"] is None and not failed["pareto"]
        assert "inception_v3: distill exited" in failed["reason"] and "inception_v3-distill.log" in failed["reason"]
    assert "inception_v3-int8: FAILED: inception_v3: distill exited" in result.stdout
    ok = [e for e in doc["candidates"] if e["status"] == "ok"]
    best = max(ok, key=lambda e: (e["top1"], -e["latency_ms"]["median"]))
    assert best["chosen"] and best["pareto"] and doc["choice"]["chosen"] == best["id"]
    assert doc["choice"]["message"] in result.stdout


def test_outputs_are_readable_and_self_contained(swept) -> None:
    out, _, _ = swept
    md = (out / "sweep.md").read_text()
    assert "| shufflenet_v2_x0_5 | int8 | ort | 1 |" in md and "Failed: inception_v3-fp32" in md
    page = (out / "sweep.html").read_text()
    assert "data:image/png;base64," in page and "<script" not in page and 'src="http' not in page
    assert (out / "sweep.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in (out / "models").iterdir()) == sorted(
        f"{s}-{p}.onnx" for s in STUDENTS[:2] for p in ("fp32", "int8"))


def test_rerun_redoes_nothing_and_takes_latencies_from_a_target_report(swept, tmp_path: Path) -> None:
    out, cache, _ = swept
    before = _mtimes(out / "candidates"), _mtimes(out / "logs")
    doc = json.loads((out / "sweep.json").read_text())
    sha = {e["id"]: e["model_sha256"] for e in doc["candidates"]}
    # A "board" report: one row named like the sweep's model file, one renamed but carrying the file's hash.
    by_name = json.loads((out / "bench" / "mobilenet_v3_small-int8" / "report.json").read_text())["results"][0]
    by_hash = {**by_name, "model": "on-board.onnx", "model_sha256": sha["shufflenet_v2_x0_5-fp32"]}
    by_name["latency_ms"] = {**by_name["latency_ms"], "median": 0.25}
    by_hash["latency_ms"] = {**by_hash["latency_ms"], "median": 0.5}
    report = {"schema": 1, "kind": "augkd-edge/bench", "environment": {"label": "board"},
              "results": [by_name, by_hash]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    result = sweep(out, cache, "--latency-from", str(tmp_path / "report.json"), "--latency-budget-ms", "0.3")
    assert result.returncode == 0, result.stderr
    assert "6 candidate(s) already finished" in result.stdout
    assert (_mtimes(out / "candidates"), _mtimes(out / "logs")) == before  # nothing redone, no child run
    doc = json.loads((out / "sweep.json").read_text())
    by_id = {e["id"]: e for e in doc["candidates"]}
    assert by_id["mobilenet_v3_small-int8"]["latency_source"]["matched_by"] == "name"
    assert by_id["shufflenet_v2_x0_5-fp32"]["latency_source"]["matched_by"] == "sha256"
    assert by_id["shufflenet_v2_x0_5-fp32"]["latency_ms"]["median"] == 0.5
    assert {u["id"] for u in doc["unmatched"]} == {"mobilenet_v3_small-fp32", "shufflenet_v2_x0_5-int8"}
    assert "unmatched mobilenet_v3_small-fp32: no row" in result.stdout
    assert doc["choice"]["chosen"] == "mobilenet_v3_small-int8" and doc["latency_from"]["label"] == "board"


def test_an_interrupted_sweep_resumes_without_redoing_finished_candidates(swept, tmp_path: Path) -> None:
    out, cache, _ = swept
    copy = tmp_path / "sw"
    shutil.copytree(out, copy)
    (copy / "candidates" / "mobilenet_v3_small-int8.json").unlink()  # to be done again
    before = _mtimes(copy / "candidates")
    distill_log = (copy / "logs" / "mobilenet_v3_small-distill.log").read_text()
    export_log = copy / "logs" / "mobilenet_v3_small-int8-export.log"
    stopped = interrupt_when(sweep_cmd(copy, cache, "--retry-failed"), lambda: export_log.read_text().count("$ ") == 2)
    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    assert "interrupted; rerun the same command to resume" in stopped.stderr
    assert _mtimes(copy / "candidates") == before  # nothing recorded for the stopped one
    result = sweep(copy, cache, "--retry-failed")
    assert result.returncode == 0, result.stderr
    after = _mtimes(copy / "candidates")
    redone = {name for name in after if after[name] != before.get(name)}
    # the interrupted candidate, and with --retry-failed the two failed ones; the other three are kept
    assert redone == {"mobilenet_v3_small-int8.json", "inception_v3-fp32.json", "inception_v3-int8.json"}
    assert (copy / "logs" / "mobilenet_v3_small-distill.log").read_text() == distill_log  # distill reused
    assert export_log.read_text().count("$ ") == 3  # the first sweep, the stopped one, the resumed one
    record = json.loads((copy / "candidates" / "mobilenet_v3_small-int8.json").read_text())
    assert record["status"] == "ok" and record["latency_ms"]["median"] > 0


def test_openvino_backend_measures_the_ir_and_its_int8(tmp_path: Path) -> None:
    """--backend openvino: export --openvino's IR (its INT8 chosen by export among QDQ and NNCF) benched by OpenVINO;
    the published model is the .xml with its .bin."""
    pytest.importorskip("openvino", reason="OpenVINO is the optional extra augkd-edge[openvino]")
    cmd = sweep_cmd(tmp_path / "sw", tmp_path / "cache", "--backend", "openvino")
    cmd[cmd.index("--students") + 1] = "mobilenet_v3_small"
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    rows = {e["precision"]: e for e in doc["candidates"]}
    assert set(rows) == {"fp32", "int8"} and all(e["status"] == "ok" for e in rows.values()), rows
    for precision, e in rows.items():
        assert e["backend"] == "openvino" and e["latency_ms"]["median"] > 0
        model = Path(e["model_file"])
        assert model.suffix == ".xml" and model.with_suffix(".bin").is_file()
        assert e["model_bytes"] == model.stat().st_size + model.with_suffix(".bin").stat().st_size
    assert rows["int8"]["top1_source"].startswith("export.json openvino.int8.int8_top1")
