"""Which static INT8 format does ONNX Runtime's CPU execution provider run fastest? (issue 11, part 2)

Quantizes one exported FP32 student several ways with ONNX Runtime's own
``quantize_static`` (same calibration images: the run's training split), then
measures every model side by side in one process: test-split top-1 and batch-1 /
batch-8 latency, in interleaved rounds so that the machine's load hits every
format alike. Ratios against FP32 from the same rounds are what to compare;
absolute times depend on the machine and its load.

Usage::

    augkd-edge export RUN_DIR --onnx --out RUN_DIR/export
    python benchmarks/int8_formats.py RUN_DIR --onnx RUN_DIR/export/student.onnx \
        --out benchmarks/results/int8-formats-cpu-2core
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

# name -> quantize_static settings. "qdq_s8s8_sym_perchannel" is export's TensorRT form,
# "qdq_u8s8_perchannel_reducerange" its ORT CPU form (export/quantize.py, INT8_FORMATS).
FORMATS: dict[str, dict[str, Any]] = {
    "qdq_s8s8_sym_perchannel": dict(fmt="QDQ", act="QInt8", w="QInt8", pc=True, sym=True),
    "qdq_u8s8_perchannel": dict(fmt="QDQ", act="QUInt8", w="QInt8", pc=True),
    "qdq_u8s8_perchannel_reducerange": dict(fmt="QDQ", act="QUInt8", w="QInt8", pc=True, rr=True),
    "qdq_u8s8_pertensor": dict(fmt="QDQ", act="QUInt8", w="QInt8", pc=False),
    "qop_u8s8_perchannel": dict(fmt="QOperator", act="QUInt8", w="QInt8", pc=True),
    "qop_u8s8_pertensor": dict(fmt="QOperator", act="QUInt8", w="QInt8", pc=False),
    "qop_u8u8_pertensor": dict(fmt="QOperator", act="QUInt8", w="QUInt8", pc=False),
    "qop_u8s8_perchannel_reducerange": dict(fmt="QOperator", act="QUInt8", w="QInt8", pc=True, rr=True),
    "qdq_u8s8_perchannel_convonly": dict(fmt="QDQ", act="QUInt8", w="QInt8", pc=True, ops=["Conv", "Gemm", "MatMul"]),
    "qop_u8s8_perchannel_convonly": dict(fmt="QOperator", act="QUInt8", w="QInt8", pc=True,
                                         ops=["Conv", "Gemm", "MatMul"]),
}


def quantize_all(fp32: Path, train_x: np.ndarray, out: Path) -> dict[str, Path]:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from augkd_edge.export.quantize import ImageCalibrationReader

    out.mkdir(parents=True, exist_ok=True)
    prepared = out / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    paths = {"fp32": fp32}
    for name, f in FORMATS.items():
        extra = {"QuantizeBias": False}
        if f.get("sym"):
            extra.update(ActivationSymmetric=True, WeightSymmetric=True)
        paths[name] = out / f"{name}.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(prepared), str(paths[name]), ImageCalibrationReader(train_x, "image", 32, None),
                            quant_format=getattr(QuantFormat, f["fmt"]), per_channel=f["pc"],
                            activation_type=getattr(QuantType, f["act"]), weight_type=getattr(QuantType, f["w"]),
                            reduce_range=f.get("rr", False), op_types_to_quantize=f.get("ops"), extra_options=extra)
    return paths


def measure(paths: dict[str, Path], test_x: np.ndarray, test_y: np.ndarray, threads: int,
            rounds: int) -> dict[str, dict[str, float]]:
    from augkd_edge.export.runtimes import OrtRunner
    from augkd_edge.export.speedup import side_by_side

    runners = {name: OrtRunner(path, threads=threads) for name, path in paths.items()}
    try:
        res = side_by_side(runners, test_x, test_y, "fp32", "speedup_vs_fp32", rounds=rounds)
    finally:
        for runner in runners.values():
            runner.close()
    for name, r in res.items():
        r["bytes"] = paths[name].stat().st_size
    return res


def markdown(res: dict[str, dict[str, float]], command: str, meta: dict[str, Any]) -> str:
    lines = ["# INT8 formats on ONNX Runtime's CPU execution provider", "", f"Command: `{command}`", "",
             f"onnxruntime {meta['onnxruntime']}, {meta['machine']}, {meta['threads']} thread(s), "
             f"{meta['rounds']} interleaved rounds of 10 calls per format and batch; test split of {meta['model']}.",
             "", "| format | test top-1 | bytes | batch 1 median ms | vs FP32 | batch 8 median ms | vs FP32 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in res.items():
        lines.append(f"| {name} | {r['top1']:.4f} | {r['bytes']} | {r['batch1_median_ms']:.3f} | "
                     f"{r['batch1_speedup_vs_fp32']:.2f}x | {r['batch8_median_ms']:.3f} | "
                     f"{r['batch8_speedup_vs_fp32']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import shlex
    import sys

    import onnxruntime as ort

    from augkd_edge.models.loading import load_model_file
    from augkd_edge.rundir import split_arrays

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a distill run folder (its student.pt records the splits)")
    p.add_argument("--onnx", type=Path, required=True, help="the FP32 student.onnx exported from it")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args()
    _, meta = load_model_file(args.run_dir / "student.pt")
    train_x, _ = split_arrays(meta, "train")  # calibration never sees the test split
    test_x, test_y = split_arrays(meta, "test")
    paths = quantize_all(args.onnx, train_x, args.out / "models")
    res = measure(paths, test_x, test_y, args.threads, args.rounds)
    info = {"onnxruntime": ort.__version__, "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "threads": args.threads, "rounds": args.rounds, "model": str(args.run_dir / "student.pt")}
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    (args.out / "int8_formats.json").write_text(json.dumps({"schema": 1, "command": command, **info,
                                                             "formats": FORMATS, "results": res}, indent=1))
    (args.out / "int8_formats.md").write_text(markdown(res, command, info))
    print(markdown(res, command, info))


if __name__ == "__main__":
    main()
