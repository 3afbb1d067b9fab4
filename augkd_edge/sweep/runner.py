"""Running one candidate's chain through the other commands' command lines.

The sweep drives ``distill``, ``export`` and ``bench`` as child processes
(``python -m augkd_edge.cli ...``) and reads only their public JSON outputs
(``results.json``, ``export.json``, the bench ``report.json``): a candidate is
then exactly what a user would get typing those commands, and the sweep keeps
working however those commands are built inside. Each child's output goes to
its own log file, whose path a failure names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from augkd_edge.sweep.records import Layout, candidate_id


# Exit codes of a child stopped by Ctrl-C or a termination signal (negative: killed by that signal).
_INTERRUPTED = {-signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM}


class StepFailed(Exception):
    """A child command failed; the message is one line naming the step, its reason and its log."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """What every candidate of a sweep shares (the validated command-line settings)."""

    layout: Layout
    method: str
    preset: str
    seed: int
    config: Path | None
    cache_dir: Path | None
    distill_args: tuple[str, ...]
    export_args: tuple[str, ...]
    backend: str  # ort | trt
    device: str  # where ONNX Runtime runs
    batch: int
    threads: int | None
    warmup: int
    iters: int


def _last_error(log: Path) -> str:
    """The line of a child's log that says what went wrong (its ``error:`` line, else its last line)."""
    try:
        lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if "error:" in ln.lower() or ln.startswith(("Error", "Traceback"))]
    tail = [ln for ln in lines if not ln.startswith(("File ", "^", "~"))]
    return (errors[-1] if errors else tail[-1] if tail else "no output")[:400]


def run_cli(args: list[str], log: Path, step: str) -> None:
    """``python -m augkd_edge.cli ARGS`` with its output in ``log``; StepFailed on a non-zero exit.

    The environment is inherited (PYTHONPATH, OMP_NUM_THREADS), so children import the same
    augkd_edge as the sweep and respect the same thread limits.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "augkd_edge.cli", *args]
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"$ {shlex.join(cmd)}\n")
        fh.flush()
        code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ)).returncode
    if code in _INTERRUPTED:  # stopped, not failed: leave no record, so a rerun does it again
        raise KeyboardInterrupt(f"{step} was stopped by a signal (exit {code})")
    if code != 0:
        raise StepFailed(f"{step} exited {code}: {_last_error(log)} (log: {log})")


def distill(plan: Plan, student: str) -> Path:
    """Train (or finish, or reuse) the student's run; its folder. Shared by the student's precisions."""
    run_dir = plan.layout.run_dir(student)
    if (run_dir / "results.json").is_file():
        return run_dir
    args = ["distill", "--student", student, "--method", plan.method, "--preset", plan.preset,
            "--seed", str(plan.seed), "--out", str(run_dir), "--quiet"]
    if plan.config is not None:
        args += ["--config", str(plan.config)]
    if plan.cache_dir is not None:
        args += ["--cache-dir", str(plan.cache_dir)]
    if (run_dir / "config.json").is_file():  # interrupted: distill continues from its checkpoints
        args.append("--resume")
    run_cli(args + list(plan.distill_args), plan.layout.log(f"{student}-distill"), f"{student}: distill")
    return run_dir


def _export(plan: Plan, run_dir: Path, ident: str, precision: str) -> dict[str, Any]:
    """Export the candidate's model; export.json. INT8 goes through export's own accuracy gate."""
    out = plan.layout.export_dir(ident)
    args = ["export", str(run_dir), "--out", str(out), "--int8" if precision == "int8" else "--onnx"]
    if plan.backend == "trt":
        args.append("--trt")
    if plan.backend == "openvino":
        args.append("--openvino")  # its INT8 IR passes export's gate too (or the export fails)
    if plan.threads is not None:
        args += ["--threads", str(plan.threads)]
    log = plan.layout.log(f"{ident}-export")
    try:
        run_cli(args + list(plan.export_args), log, f"{ident}: export")
    except StepFailed as exc:
        int8 = _read_json(out / "export.json").get("int8") if (out / "export.json").is_file() else None
        if int8 and not int8.get("accepted"):
            raise StepFailed(f"{ident}: INT8 rejected by export's gate: top-1 {int8['fp32_top1']:.4f} -> "
                             f"{int8['int8_top1']:.4f} (drop {int8['drop_points']:.2f} points > "
                             f"{int8['max_drop_points']:g}) (log: {log})") from None
        raise exc
    return _read_json(out / "export.json")


def _read_json(path: Path) -> dict[str, Any]:
    """A child's JSON output (results.json, export.json, report.json)."""
    return json.loads(path.read_text(encoding="utf-8"))


def _publish(plan: Plan, ident: str, source: Path) -> Path:
    """A hard link (or copy) of the exported file under the candidate's unique name."""
    target = plan.layout.model_copy(ident, source.suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    pairs = [(source, target)] + ([(source.with_suffix(".bin"), target.with_suffix(".bin"))]
                                  if source.suffix == ".xml" else [])  # an OpenVINO IR is the .xml and its .bin
    for src, dst in pairs:
        dst.unlink(missing_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    return target


def _bench(plan: Plan, model: Path, ident: str) -> tuple[dict[str, float], Path]:
    """Latency statistics (ms) of ``model`` at the sweep's batch, measured by ``augkd-edge bench run``."""
    out = plan.layout.bench_dir(ident)
    args = ["bench", "run", str(model), "--backend", plan.backend, "--batch", str(plan.batch),
            "--warmup", str(plan.warmup), "--iters", str(plan.iters), "--out", str(out)]
    if plan.backend == "ort":
        args += ["--device", plan.device]
    if plan.threads is not None:
        args += ["--threads", str(plan.threads)]
    log = plan.layout.log(f"{ident}-bench")
    run_cli(args, log, f"{ident}: bench")
    rows = [r for r in _read_json(out / "report.json")["results"] if r.get("batch") == plan.batch]
    if not rows or "error" in rows[0]:
        raise StepFailed(f"{ident}: bench measured nothing at batch {plan.batch}: "
                         f"{rows[0].get('error') if rows else 'no row'} (log: {log})")
    return {k: float(rows[0]["latency_ms"][k]) for k in ("median", "p90", "p99")}, out / "report.json"


def count_params(run_dir: Path) -> int:
    """Trainable parameters of the student (BatchNorm running statistics are buffers, not parameters)."""
    import torch

    record = torch.load(run_dir / "student.pt", map_location="cpu", weights_only=True)
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return int(sum(t.numel() for k, t in record["state_dict"].items() if not k.endswith(skip)))


def _top1(run_dir: Path, export: dict[str, Any], precision: str) -> tuple[float, str]:
    """The candidate's own test top-1 and where it comes from.

    FP32: the student's test top-1 from results.json; export's parity check has already required
    the ONNX model to agree with it on every test image's class. INT8: the quantized model's own
    top-1 on the same split, measured by export's gate with ONNX Runtime.
    """
    if precision == "int8" and "openvino" in export:
        return (float(export["openvino"]["int8"]["int8_top1"]),
                f"export.json openvino.int8.int8_top1 (OpenVINO, {export['openvino']['int8']['chosen']}, test split)")
    if precision == "int8":
        return float(export["int8"]["int8_top1"]), "export.json int8.int8_top1 (ONNX Runtime, QDQ model, test split)"
    results = _read_json(run_dir / "results.json")
    source = "results.json test.top1 (PyTorch; ONNX parity: same class on every test image)"
    return float(results["test"]["top1"]), source


def _model_file(plan: Plan, export: dict[str, Any], precision: str) -> tuple[str, str | None]:
    """(the ONNX file of this precision, or with --backend openvino its IR; the TensorRT engine built from it or
    None) in export.json's files."""
    if plan.backend == "openvino":
        return f"student.{precision}.xml", None
    onnx = "student.int8.onnx" if precision == "int8" else "student.onnx"
    engines = [name for name in export.get("files", {}) if name.endswith(".engine")]
    return onnx, (engines[0] if plan.backend == "trt" and engines else None)


def _model_bytes(files: dict[str, Any], name: str) -> int:
    """The deployed file's size; an OpenVINO IR's is its .xml and .bin together."""
    names = [name, str(Path(name).with_suffix(".bin"))] if name.endswith(".xml") else [name]
    return int(sum(files[n]["bytes"] for n in names))


def run_candidate(plan: Plan, run_dir: Path, student: str, precision: str) -> dict[str, Any]:
    """Export and measure one (student, precision); its record. StepFailed names what failed."""
    ident = candidate_id(student, precision)
    start = time.monotonic()
    export = _export(plan, run_dir, ident, precision)
    onnx_name, engine_name = _model_file(plan, export, precision)
    files, export_dir = export["files"], plan.layout.export_dir(ident)
    published = _publish(plan, ident, export_dir / (engine_name or onnx_name))
    top1, source = _top1(run_dir, export, precision)
    record: dict[str, Any] = {
        "id": ident, "student": student, "precision": precision, "backend": plan.backend,
        "device": "cuda" if plan.backend == "trt" else plan.device, "batch": plan.batch, "status": "ok",
        "reason": None, "top1": top1, "top1_source": source, "params": count_params(run_dir),
        "model_bytes": _model_bytes(files, engine_name or onnx_name), "model_file": str(published),
        "model_sha256": files[onnx_name]["sha256"],
        "engine_sha256": files[engine_name]["sha256"] if engine_name else None,
        "run_dir": str(run_dir), "export_dir": str(export_dir),
        "logs": [str(plan.layout.log(f"{student}-distill")), str(plan.layout.log(f"{ident}-export"))],
    }
    if plan.backend == "trt" and engine_name is None:
        record.update(latency_ms=None, latency_source={"from": "local", "reason": (
            f"no TensorRT here, so no engine: on the target run {export_dir}/build_engine.sh, name the engine "
            f"{ident}.engine, bench it and pass its report.json with --latency-from")})
    else:
        latency, report = _bench(plan, published, ident)
        record.update(latency_ms=latency, latency_source={"from": "local", "report": str(report)})
        record["logs"].append(str(plan.layout.log(f"{ident}-bench")))
    record["wall_s"] = round(time.monotonic() - start, 1)
    return record


def failed_record(plan: Plan, student: str, precision: str, reason: str) -> dict[str, Any]:
    """The record of a candidate that did not finish: kept, so the outputs say why and a rerun skips it."""
    ident = candidate_id(student, precision)
    return {"id": ident, "student": student, "precision": precision, "backend": plan.backend,
            "device": "cuda" if plan.backend == "trt" else plan.device, "batch": plan.batch, "status": "failed",
            "reason": reason, "top1": None, "latency_ms": None, "params": None, "model_bytes": None,
            "model_file": None, "run_dir": str(plan.layout.run_dir(student)),
            "export_dir": str(plan.layout.export_dir(ident)), "logs": []}
