"""Is the INT8 model faster than FP32 *here*? One side-by-side measurement for `export --int8`.

A user who asks for INT8 wants speed; whether they get it depends on the
runtime's kernels (ONNX Runtime's CPU provider runs TensorRT's symmetric QDQ
form several times slower than FP32: ``benchmarks/results/int8-formats-cpu-2core``).
So export measures both models on this machine, in interleaved rounds so that
load changes hit both alike, and warns when INT8 does not pay off. It is a
check, not a benchmark: ``augkd-edge bench`` is the full latency report.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from augkd_edge.export.runtimes import OrtRunner


def interleaved_medians(runners: dict[str, Any], x: np.ndarray, *, rounds: int, calls: int,
                        warmup: int) -> dict[str, float]:
    """Median ms per call of each runner on ``x``, timed in interleaved rounds of ``calls`` calls.

    Interleaving (every runner once per round) makes a change in the machine's
    load hit all runners alike, so their ratios stay meaningful on a shared CPU.
    """
    for runner in runners.values():
        runner.prepare(x)
        for _ in range(warmup):
            runner.run()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            start = time.perf_counter()
            for _ in range(calls):
                runner.run()
            samples[name].append((time.perf_counter() - start) * 1000.0 / calls)
    return {name: statistics.median(values) for name, values in samples.items()}


def side_by_side(runners: dict[str, Any], images: np.ndarray, labels: np.ndarray, baseline: str, ratio_key: str,
                 *, rounds: int, batches: tuple[int, ...] = (1, 8)) -> dict[str, dict[str, float]]:
    """Per runner: top-1 on ``images``, and per batch its median ms from the same interleaved rounds and
    ``baseline``'s ms over its own (``batch<B>_<ratio_key>``, > 1: faster than the baseline). The benchmarks that
    compare model forms or runtimes (``benchmarks/int8_formats.py``, ``benchmarks/openvino_vs_ort.py``) share it."""
    from augkd_edge.export.latency import batched_logits, top1_accuracy

    res = {name: {"top1": top1_accuracy(batched_logits(r.infer, images), labels)} for name, r in runners.items()}
    for batch in batches:
        ms = interleaved_medians(runners, np.ascontiguousarray(images[:batch]), rounds=rounds, calls=10, warmup=20)
        for name, r in res.items():
            r[f"batch{batch}_median_ms"] = ms[name]
            r[f"batch{batch}_{ratio_key}"] = ms[baseline] / ms[name]
    return res


def int8_speedup(fp32: OrtRunner, int8: OrtRunner, images: np.ndarray, *, batch: int = 1,
                 threads: int | None = None, rounds: int = 15, calls: int = 10, warmup: int = 10) -> dict[str, Any]:
    """Median ms per call of both open ONNX Runtime CPU runners at ``batch``, and FP32 / INT8.

    ``threads``: what the runners were opened with, recorded beside the figures.
    """
    x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])).astype(np.float32))
    ms = interleaved_medians({"fp32": fp32, "int8": int8}, x, rounds=rounds, calls=calls, warmup=warmup)
    return {"backend": "ort-cpu", "batch": batch, "threads": threads, "rounds": rounds, "calls_per_round": calls,
            "fp32_median_ms": ms["fp32"], "int8_median_ms": ms["int8"], "speedup": ms["fp32"] / ms["int8"]}


def fp32_name(int8_name: str) -> str:
    """The FP32 file an INT8 one was quantized from, by export's naming: student.int8.onnx -> student.onnx."""
    return int8_name.replace(".int8.", ".", 1)


def int8_pairs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each measured INT8 row of a bench run beside the FP32 row of its source model (same backend, device,
    batch): the speed-up a user asked INT8 for, as measured in this one run."""
    fp32 = {(r["model"], r["backend"], r["device"], r["batch"]): r for r in rows
            if r.get("precision") == "fp32" and "latency_ms" in r}
    pairs = []
    for r in rows:
        if r.get("precision") != "int8" or "latency_ms" not in r:
            continue
        ref = fp32.get((fp32_name(r["model"]), r["backend"], r["device"], r["batch"]))
        if ref is None:
            continue
        a, b = ref["latency_ms"]["median"], r["latency_ms"]["median"]
        pairs.append({"int8_model": r["model"], "fp32_model": ref["model"], "backend": r["backend"],
                      "device": r["device"], "batch": r["batch"], "fp32_median_ms": a, "int8_median_ms": b,
                      "speedup": a / b})
    return pairs
