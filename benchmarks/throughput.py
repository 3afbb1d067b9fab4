"""Per-stage training throughput of the three AuG-KD modules, against the reference code.

    python benchmarks/throughput.py                     # CPU, batch 128, ResNet-34 -> MobileNet-V3-Small, 32x32
    python benchmarks/throughput.py --device cuda --batch 2048 --label h100

It drives the real stage classes (the same ``train_step`` the pipeline runs),
with randomly initialised networks: throughput does not depend on the weights.
Images per second are counted as METHOD.md counts them for the reference code:

- Module 1: generated images per second, one iteration = 1 generator step and
  k student/encoder steps, each on ``batch`` images: ``batch * (k + 1) / s``;
- Module 2: student-domain images per second through E, A, G and T (forward and backward);
- Module 3: real student-domain images per second (each step also trains on their mixups).

Reference figures (the public code on the 2-core CPU, batch 128): 152, 101 and 76 images/s.
Writes ``benchmarks/results/throughput-<label>.json`` and ``.md`` (schema 1).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from augkd_edge.config import DistillConfig
from augkd_edge.data import IMAGENET_MEAN, IMAGENET_STD
from augkd_edge.method.anchor import AnchorStage
from augkd_edge.method.common import make_augment
from augkd_edge.method.data_free import DataFreeStage
from augkd_edge.method.mixup import build_mixup_stage
from augkd_edge.models.anchornet import AnchorNet
from augkd_edge.models.generative import Encoder, Generator
from augkd_edge.models.zoo import build_classifier
from augkd_edge.report import write_json

REFERENCE = {"data_free": 152.0, "anchor": 101.0, "mixup": 76.0}


def _timed(step: Callable[[], Any], warmup: int, iters: int) -> float:
    """Seconds per call; one host sync at the end (and on CUDA, a device sync)."""
    for _ in range(warmup):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        out = step()
    float(next(iter(out.values())))  # wait for the last step's result
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = DistillConfig.preset_config("quick")
    cfg.data_free.batch_size = cfg.anchor.batch_size = cfg.mixup.batch_size = args.batch
    k, latent = cfg.data_free.k, cfg.data_free.latent_dim
    n_classes, size = 10, 32
    teacher = build_classifier(args.teacher, n_classes).to(device).eval()
    student = build_classifier(args.student, n_classes).to(device)
    gen = Generator(latent, size, width=cfg.data_free.gen_width).to(device)
    enc = Encoder(latent, n_classes, size, width=cfg.data_free.gen_width).to(device)
    anchor = AnchorNet(latent, n_classes, cfg.anchor.alpha, cfg.anchor.hidden).to(device)
    x = torch.rand(args.batch * 2, 3, size, size)
    y = torch.arange(args.batch * 2) % n_classes
    common = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, seed=0)
    augment = make_augment("digits")
    results: dict[str, Any] = {}

    stage1 = DataFreeStage(teacher, student, gen, enc, cfg.data_free, **common)
    stage1.train_mode()
    batch1 = next(iter(stage1.batches(0)))
    s = _timed(lambda: stage1.train_step(batch1), args.warmup, args.iters)
    results["data_free"] = {"s_per_iter": s, "images_per_s": args.batch * (k + 1) / s}

    stage2 = AnchorStage(teacher, gen, enc, anchor, x, y, x[:16], y[:16], cfg.anchor, augment=augment, **common)
    stage2.train_mode()
    batch2 = next(iter(stage2.batches(0)))
    s = _timed(lambda: stage2.train_step(batch2), args.warmup, args.iters)
    results["anchor"] = {"s_per_batch": s, "images_per_s": len(batch2[0]) / s}

    stage3 = build_mixup_stage("augkd", student, teacher, gen, enc, x, y, x[:16], y[:16], cfg.mixup, anchor=anchor,
                               augment=augment, **common)
    stage3.train_mode()
    batch3 = next(iter(stage3.batches(0)))
    s = _timed(lambda: stage3.train_step(batch3), args.warmup, args.iters)
    results["mixup"] = {"s_per_batch": s, "images_per_s": len(batch3[0]) / s, "f": stage3.factor(0)}
    return results


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Training throughput: {report['label']}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"{report['teacher']} -> {report['student']}, 32x32, batch {report['batch']}, device {report['device']}, "
        f"torch {report['torch']}, {report['threads']} threads, {report['machine']}.",
        "",
        "| stage | images/s | reference images/s | ratio |",
        "|---|---:|---:|---:|",
    ]
    for stage, row in report["stages"].items():
        ref = REFERENCE.get(stage)
        ratio = f"{row['images_per_s'] / ref:.2f}x" if ref and report["device"] == "cpu" and report["batch"] == 128 else "-"
        lines.append(f"| {stage} | {row['images_per_s']:.1f} | {ref if ref else '-'} | {ratio} |")
    lines += ["", "Reference: the public AuG-KD code on the same 2-core CPU and configuration (METHOD.md)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--teacher", default="resnet34")
    parser.add_argument("--student", default="mobilenet_v3_small")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--label", default=None, help="machine label for the file name (default: cpu-<cores>core)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import os

    label = args.label or f"{args.device}-{os.cpu_count()}core"
    stages = measure(args)
    report = {
        "schema": 1,
        "label": label,
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "device": args.device,
        "batch": args.batch,
        "teacher": args.teacher,
        "student": args.student,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "stages": stages,
        "reference_images_per_s": REFERENCE,
    }
    out = Path(args.out)
    write_json(report, out / f"throughput-{label}.json")
    (out / f"throughput-{label}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
