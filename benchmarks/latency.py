"""Latency suite: the standard `augkd-edge bench` grid over everything a run folder holds,
written under benchmarks/results/latency/<label>/ and compared with the reports already there.

Usage (like a user: it only calls the CLI)::

    python benchmarks/latency.py RUN_DIR --label ws-cpu [--threads 4] [--device cuda] [--quick]

RUN_DIR's student.pt is measured with torch, every .onnx below it (FP32 and INT8 QDQ)
with ONNX Runtime, and with --device cuda every .engine with TensorRT; on cuda the
torch model is measured with and without CUDA graphs (two reports, then compared).
The standard grid is batches 1, 8, 32 with 20 warm-up and 200 timed iterations
(--quick: 3 and 20). Labelled top-1 is added with --eval when the model file records
its split.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "latency"


def models_in(run_dir: Path, device: str) -> list[Path]:
    """student.pt (or the file given), the ONNX files below the run folder and, on cuda, its engines."""
    if run_dir.is_file():
        return [run_dir]
    found = [run_dir / "student.pt"] if (run_dir / "student.pt").is_file() else []
    found += sorted(run_dir.rglob("*.onnx"))
    if device == "cuda":
        found += sorted(p for suffix in ("*.engine", "*.plan") for p in run_dir.rglob(suffix))
    return found


def bench(models: list[Path], label: str, args: argparse.Namespace, extra: list[str]) -> Path:
    out = RESULTS / label
    warmup, iters = ("3", "20") if args.quick else ("20", "200")
    cmd = ["augkd-edge", "bench", *map(str, models), "--device", args.device, "--batch", args.batch,
           "--warmup", warmup, "--iters", iters, "--label", label, "--out", str(out), *extra]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out / "report.json"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="run folder (student.pt + exported .onnx/.engine) or a model file")
    p.add_argument("--label", required=True, help="machine label; also the results folder name")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch", default="1,8,32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--eval", action="store_true", help="also top-1 on the model's recorded test split")
    p.add_argument("--quick", action="store_true", help="3 warm-up / 20 timed iterations (smoke test)")
    args = p.parse_args()

    models = models_in(args.run_dir, args.device)
    if not models:
        p.error(f"{args.run_dir}: no student.pt, .onnx or engine found")
    extra = ["--eval", str(models[0])] if args.eval and models[0].suffix == ".pt" else []
    reports = [bench(models, args.label, args, extra)]
    if args.device == "cuda" and models[0].suffix == ".pt":
        reports.append(bench(models[:1], f"{args.label}-cuda-graphs", args, [*extra, "--cuda-graphs"]))
    others = sorted(r for r in RESULTS.glob("*/report.json") if r not in reports)
    if others:
        compare = ["augkd-edge", "bench", "compare", *map(str, reports + others), "--baseline", "0",
                   "--out", str(RESULTS / f"compare-{args.label}")]
        print("$", " ".join(compare), flush=True)
        subprocess.run(compare, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
