"""OpenVINO against ONNX Runtime on this CPU, side by side in one process (issue 22's targets).

For each distill run folder: ``augkd-edge export --onnx --int8 --openvino``, then every OpenVINO INT8 form made
from the same calibration images (the QDQ model in ONNX Runtime's CPU form and in the symmetric form, read by
OpenVINO, and NNCF's), and every model measured in interleaved rounds (so the machine's load hits all alike) at
batch 1 and 8, with 1 thread and with all threads: ORT FP32, ORT INT8, OpenVINO FP32 / FP16 / INT8 (each compiled
for the batch it runs, as the product's runner times it) and OpenVINO FP32 / NNCF INT8 with the IR's dynamic batch
(the runner before it compiled per shape). Ratios
against ORT FP32 of the same rounds are what to compare; absolute times depend on the machine and its load.
Test-split top-1 of every model beside them.

Usage::

    python benchmarks/openvino_vs_ort.py RUN_DIR [RUN_DIR ...] --out benchmarks/results/openvino-cpu-2core \
        --work /tmp/ov-models
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

TARGETS = {"mobilenet_v3_small": 1.5, "resnet18": 2.5}  # OpenVINO INT8 / ORT FP32, issue 22


def export_all(run_dir: Path, out: Path, train_x: np.ndarray) -> dict[str, tuple[str, Path]]:
    """name -> (runner kind, model file) for every model compared: the product's own export (ONNX, ORT INT8, IR
    FP32 / FP16), then each OpenVINO INT8 form from the same calibration images (export keeps only the faster)."""
    from augkd_edge.deploy import export_student
    from augkd_edge.export.openvino import convert_to_ir
    from augkd_edge.export.openvino_export import quantize_nncf
    from augkd_edge.export.quantize import DEFAULT_CALIBRATION_SIZE, calibration_subset, quantize_int8

    export_student(run_dir, out, onnx=True, int8=True, openvino=True, threads=1)
    calib = calibration_subset(train_x, DEFAULT_CALIBRATION_SIZE)
    symmetric = quantize_int8(out / "student.onnx", out / "student.int8-sym.onnx", calib, target="tensorrt")
    return {"ort fp32": ("ort", out / "student.onnx"), "ort int8": ("ort", out / "student.int8.onnx"),
            "openvino fp32": ("ov", out / "student.fp32.xml"), "openvino fp16": ("ov", out / "student.fp16.xml"),
            "openvino int8 (QDQ, ORT CPU form)": ("ov", convert_to_ir(out / "student.int8.onnx", out / "q1.xml")),
            "openvino int8 (QDQ, symmetric form)": ("ov", convert_to_ir(symmetric, out / "q2.xml")),
            "openvino int8 (NNCF)": ("ov", quantize_nncf(out / "student.fp32.xml", out / "q3.xml", calib)),
            # the runner's timed path compiles for the staged shape; these rows keep the IR's dynamic batch
            "openvino fp32 (dynamic batch)": ("ov-dynamic", out / "student.fp32.xml"),
            "openvino int8 (NNCF, dynamic batch)": ("ov-dynamic", out / "q3.xml")}


def measure(models: dict[str, tuple[str, Path]], test_x: np.ndarray, test_y: np.ndarray, threads: int,
            rounds: int) -> dict[str, dict[str, float]]:
    from augkd_edge.export.openvino import OpenVinoRunner
    from augkd_edge.export.runtimes import OrtRunner
    from augkd_edge.export.speedup import side_by_side

    runners = {name: (OrtRunner(path, threads=threads) if kind == "ort"
                      else OpenVinoRunner(path, threads=threads, static_shape=kind == "ov"))
               for name, (kind, path) in models.items()}
    try:
        return side_by_side(runners, test_x, test_y, "ort fp32", "vs_ort_fp32", rounds=rounds)
    finally:
        for runner in runners.values():
            runner.close()


def verdicts(arch: str, by_threads: dict[int, dict[str, dict[str, float]]]) -> list[str]:
    """The issue's speed target per thread count and batch: the faster OpenVINO INT8 form against ORT FP32."""
    if arch not in TARGETS:
        return []
    lines = []
    for threads, res in by_threads.items():
        for batch in (1, 8):
            best = max((r[f"batch{batch}_vs_ort_fp32"], n) for n, r in res.items()
                       if n.startswith("openvino int8") and "dynamic" not in n)
            ok = "PASS" if best[0] >= TARGETS[arch] else "MISS"
            lines.append(f"- {threads} thread(s), batch {batch}: {best[1]} {best[0]:.2f}x ORT FP32 "
                         f"(target >= {TARGETS[arch]}x): {ok}")
    return lines


def markdown(result: dict[str, Any]) -> str:
    lines = ["# OpenVINO against ONNX Runtime (CPU)", "", f"Command: `{result['command']}`", "",
             f"openvino {result['openvino']}, onnxruntime {result['onnxruntime']}, {result['machine']}, "
             f"{result['rounds']} interleaved rounds of 10 calls per model, batch and thread count. Ratios are "
             "ORT FP32's median over the model's, from the same rounds (> 1: faster than ORT FP32).", ""]
    for run in result["runs"]:
        lines += [f"## {run['arch']} ({run['run_dir']})", "",
                  "| model | test top-1 | threads | batch 1 ms | vs ORT FP32 | batch 8 ms | vs ORT FP32 |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for threads, res in run["by_threads"].items():
            for name, r in res.items():
                lines.append(f"| {name} | {r['top1']:.4f} | {threads} | {r['batch1_median_ms']:.3f} | "
                             f"{r['batch1_vs_ort_fp32']:.2f}x | {r['batch8_median_ms']:.3f} | "
                             f"{r['batch8_vs_ort_fp32']:.2f}x |")
        lines += [""] + verdicts(run["arch"], run["by_threads"]) + [""]
    return "\n".join(lines) + "\n"


def main() -> None:
    import onnxruntime as ort
    import openvino

    from augkd_edge.models.loading import load_model_file
    from augkd_edge.rundir import split_arrays

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", type=Path, nargs="+", help="distill run folders (their student.pt records the splits)")
    p.add_argument("--out", type=Path, required=True, help="where openvino.json / openvino.md go")
    p.add_argument("--work", type=Path, default=None, help="where the exported models go [default: OUT/models]")
    p.add_argument("--threads", default=f"1,{os.cpu_count()}", help="comma-separated thread counts")
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    runs = []
    for run_dir in args.run_dirs:
        _, meta = load_model_file(run_dir / "student.pt")
        test_x, test_y = split_arrays(meta, "test")
        work = (args.work or args.out / "models") / run_dir.name
        models = export_all(run_dir, work, split_arrays(meta, "train")[0])
        by_threads = {int(t): measure(models, test_x, test_y, int(t), args.rounds) for t in args.threads.split(",")}
        runs.append({"run_dir": str(run_dir), "arch": meta.arch, "by_threads": by_threads})
    result = {"schema": 1, "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
              "openvino": openvino.__version__, "onnxruntime": ort.__version__,
              "machine": f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores".strip(),
              "rounds": args.rounds, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "openvino.json").write_text(json.dumps(result, indent=1))
    (args.out / "openvino.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
