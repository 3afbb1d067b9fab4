"""Per-stage training throughput of the three AuG-KD modules, against the reference code.

    python benchmarks/throughput.py                     # CPU, batch 128, ResNet-34 -> MobileNet-V3-Small, 32x32
    python benchmarks/throughput.py --device cuda --batch 2048 --label h100

It drives the real stage classes (the same ``train_step`` the pipeline runs),
with randomly initialised networks: throughput does not depend on the weights.
Images per second are counted as they were for the public code's figures (docs/decisions.md,
"The public code's throughput"):

- Module 1: generated images per second, one iteration = 1 generator step and
  k student/encoder steps, each on ``batch`` images: ``batch * (k + 1) / s``;
- Module 2: student-domain images per second through E, A, G and T (forward and backward);
- Module 3: real student-domain images per second (each step also trains on their mixups).

Reference figures (the public code on the 2-core CPU, batch 128): 152, 101 and 76 images/s.
Writes ``benchmarks/results/throughput-<label>.json`` and ``.md`` (schema 2: per-stage median,
quartiles and best step over ``--iters`` interleaved steps).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

import augkd_edge
from augkd_edge.config import AMP_MODES, DistillConfig
from augkd_edge.models.anchornet import AnchorNet
from augkd_edge.models.generative import Encoder, Generator
from augkd_edge.models.zoo import build_classifier
from augkd_edge.report import write_json

REFERENCE = {"data_free": 152.0, "anchor": 101.0, "mixup": 76.0}


def _one(step: Callable[[], Any]) -> float:
    """Seconds for one step, waiting for its result (and the device)."""
    t0 = time.perf_counter()
    out = step()
    float(next(iter(out.values())))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _interleaved(steps: dict[str, Callable[[], Any]], warmup: int, rounds: int) -> dict[str, list[float]]:
    """Per-step seconds, the stages taking turns round after round.

    A shared or throttled machine drifts over minutes; taking turns spreads
    the drift over every stage instead of penalising whichever ran last.
    """
    for step in steps.values():
        for _ in range(warmup):
            _one(step)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(_one(step))
    return times


def _summary(seconds: list[float], images: int) -> dict[str, Any]:
    med = statistics.median(seconds)
    q = statistics.quantiles(seconds, n=4) if len(seconds) >= 2 else [med, med, med]
    return {"s_per_step_median": med, "s_per_step_p25": q[0], "s_per_step_p75": q[2],
            "s_per_step_min": min(seconds), "images_per_step": images, "images_per_s": images / med,
            "images_per_s_best": images / min(seconds), "steps": len(seconds)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = DistillConfig.preset_config("quick")
    cfg.data_free.batch_size = cfg.anchor.batch_size = cfg.mixup.batch_size = args.batch
    k, latent = cfg.data_free.k, cfg.data_free.latent_dim
    n_classes, size = 10, 32

    def nets() -> tuple[torch.nn.Module, ...]:
        """Fresh networks per stage: a later stage freezes G and E, which Module 1 trains."""
        return (build_classifier(args.teacher, n_classes).to(device).eval(),
                build_classifier(args.student, n_classes).to(device),
                Generator(latent, size, width=cfg.data_free.gen_width).to(device),
                Encoder(latent, n_classes, size, width=cfg.data_free.gen_width).to(device),
                AnchorNet(latent, n_classes, cfg.anchor.alpha, cfg.anchor.hidden, cfg.anchor.conditional_psi).to(device))

    x = torch.rand(args.batch * 2, 3, size, size)
    y = torch.arange(args.batch * 2) % n_classes
    cfg.amp = args.amp
    data = dict(images=x, labels=y, eval_images=x[:16], eval_labels=y[:16], augment="digits")

    teacher, student, gen, enc, _ = nets()
    stage1 = augkd_edge.training_stage("data_free", cfg, teacher=teacher, student=student, generator=gen, encoder=enc)
    teacher, _, gen, enc, anchor = nets()
    # the bounded anchor objective's margin: the pipeline measures the teacher's energy on its own
    # domain; here the stand-in images serve (the default; the step's cost does not depend on the value)
    stage2 = augkd_edge.training_stage("anchor", cfg, teacher=teacher, generator=gen, encoder=enc, anchor=anchor,
                                       **data)
    teacher, student, gen, enc, anchor = nets()
    stage3 = augkd_edge.training_stage("mixup", cfg, teacher=teacher, student=student, generator=gen, encoder=enc,
                                       anchor=anchor, **data)
    batches = {}
    for name, stage in (("data_free", stage1), ("anchor", stage2), ("mixup", stage3)):
        stage.train_mode()
        batches[name] = next(iter(stage.batches(0)))
    steps = {
        "data_free": lambda: stage1.train_step(batches["data_free"]),
        "anchor": lambda: stage2.train_step(batches["anchor"]),
        "mixup": lambda: stage3.train_step(batches["mixup"]),
    }
    times = _interleaved(steps, args.warmup, args.iters)
    results = {
        "data_free": _summary(times["data_free"], args.batch * (k + 1)),
        "anchor": _summary(times["anchor"], len(batches["anchor"][0])),
        "mixup": _summary(times["mixup"], len(batches["mixup"][0])),
    }
    results["mixup"]["f"] = stage3.factor(0)
    for name, step in steps.items():
        results[name]["time_shares"] = _time_shares(step)
        flops = _flops(step)
        row = results[name]
        row["gflop_per_step"] = flops / 1e9
        row["gflop_per_s"] = flops / 1e9 / row["s_per_step_median"]
        # the fastest this step's arithmetic could go at the machine's dense float32 rates
        for rate, gflops in args.rates.items():
            row[f"images_per_s_at_{rate}"] = row["images_per_step"] / (flops / 1e9 / gflops)
    return results


# aten ops by what bounds them: convolutions (oneDNN, compute-bound), BatchNorm passes, the
# optimizers' updates; everything else (activations, elementwise, copies, losses) is "other".
_CATEGORIES = {
    "convolution": ("mkldnn_convolution", "convolution_backward", "_convolution", "cudnn_convolution",
                    "conv_transpose", "slow_conv"),
    "matmul": ("addmm", "aten::mm", "bmm", "linear"),
    "batch_norm": ("batch_norm",),
    "optimizer": ("Optimizer.", "_foreach", "lerp", "aten::sqrt", "addcdiv", "addcmul"),
}


def _time_shares(step: Callable[[], Any]) -> dict[str, float]:
    """Share of one step's self CPU time per op category (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    totals = {name: 0.0 for name in (*_CATEGORIES, "other")}
    for event in prof.key_averages():
        if event.key.startswith("Optimizer.") and not event.key.startswith("Optimizer.step"):
            continue
        category = next((c for c, keys in _CATEGORIES.items() if any(k in event.key for k in keys)), "other")
        if category == "optimizer" and event.key.startswith("Optimizer.step"):
            continue  # its children are counted; its own self time is Python overhead
        totals[category] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {name: value / whole for name, value in totals.items()}


def _flops(step: Callable[[], Any]) -> float:
    """Floating-point operations of one step, as PyTorch's FLOP counter sees them (matmuls and convs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def _best_rate(op: Callable[[], torch.Tensor], flops: float, reps: int) -> float:
    op()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        float(op().sum())
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


@torch.no_grad()
def machine_rates(device: torch.device, reps: int = 5) -> dict[str, float]:
    """Best-of-``reps`` GFLOP/s of two dense float32 kernels, measured in the same run as the stages.

    ``sgemm``: a 2048x2048 matrix product, the machine's practical dense ceiling;
    ``conv``: a 3x3 convolution shaped like the generator's and teacher's
    (batch 128, 128 -> 128 channels, 16x16), the rate oneDNN actually reaches
    on the convolutions these stages are made of.
    """
    n = 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False).to(device)
    x = torch.randn(128, 128, 16, 16, device=device)
    return {
        "sgemm": _best_rate(lambda: a @ b, 2 * n**3, reps),
        "conv": _best_rate(lambda: conv(x), 2 * 128 * 128 * 9 * 16 * 16 * 128, reps),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Training throughput: {report['label']}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"{report['teacher']} -> {report['student']}, 32x32, batch {report['batch']}, device {report['device']}, "
        f"torch {report['torch']}, {report['threads']} threads, {report['machine']}, --amp {report['amp']}.",
        f"Median of {report['iters']} steps per stage (stages taking turns), after {report['warmup']} warm-up steps.",
        "",
        "| stage | images/s (median) | s/step median [p25, p75] | best step images/s | reference images/s | ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    comparable = report["device"] == "cpu" and report["batch"] == 128 and report["amp"] == "off"
    for stage, row in report["stages"].items():
        ref = REFERENCE.get(stage)
        ratio = f"{row['images_per_s'] / ref:.2f}x" if ref and comparable else "-"
        lines.append(f"| {stage} | {row['images_per_s']:.1f} | {row['s_per_step_median']:.3f} "
                     f"[{row['s_per_step_p25']:.3f}, {row['s_per_step_p75']:.3f}] | {row['images_per_s_best']:.1f} | "
                     f"{ref if ref else '-'} | {ratio} |")
    rates = report["machine_gflops"]
    lines += [
        "",
        "Where the time goes: the arithmetic of one step (PyTorch's FLOP counter: convolutions and matmuls) "
        f"against two dense float32 rates measured in the same run: a 2048x2048 SGEMM ({rates['sgemm']:.0f} "
        f"GFLOP/s) and a 3x3 convolution shaped like the stages' own (batch 128, 128 channels, 16x16: "
        f"{rates['conv']:.0f} GFLOP/s). With the same math (the same FLOPs) a stage gets faster only by running "
        "its convolutions closer to these rates.",
        "",
        "| stage | GFLOP per step | achieved GFLOP/s | images/s at the conv rate | images/s at the SGEMM rate |",
        "|---|---:|---:|---:|---:|",
    ]
    for stage, row in report["stages"].items():
        ref = REFERENCE.get(stage)

        def at(rate: str) -> str:
            value = row[f"images_per_s_at_{rate}"]
            return f"{value:.0f}" + (f" ({value / ref:.2f}x)" if comparable and ref else "")

        lines.append(f"| {stage} | {row['gflop_per_step']:.1f} | {row['gflop_per_s']:.1f} | {at('conv')} | "
                     f"{at('sgemm')} |")
    names = list(next(iter(report["stages"].values()))["time_shares"])
    lines += ["", "Share of one step's CPU time by op kind (torch.profiler, self time):", "",
              "| stage | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for stage, row in report["stages"].items():
        lines.append(f"| {stage} | " + " | ".join(f"{row['time_shares'][n]:.0%}" for n in names) + " |")
    lines += ["", "Reference: the public AuG-KD code on the same 2-core CPU and configuration, float32 (docs/decisions.md); "
              "ratios are given only for that configuration."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--teacher", default="resnet34")
    parser.add_argument("--student", default="mobilenet_v3_small")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per stage first")
    parser.add_argument("--iters", type=int, default=8, help="timed steps per stage (median reported)")
    parser.add_argument("--amp", default="off", choices=AMP_MODES,
                        help="mixed precision (not the reference's float32 math: no ratio is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--label", default=None, help="machine label for the file name (default: cpu-<cores>core)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import os

    label = args.label or f"{args.device}-{os.cpu_count()}core" + ("" if args.amp == "off" else f"-{args.amp}")
    args.rates = machine_rates(torch.device(args.device))
    stages = measure(args)
    report = {
        "schema": 2,
        "label": label,
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "device": args.device,
        "batch": args.batch,
        "teacher": args.teacher,
        "student": args.student,
        "threads": torch.get_num_threads(),
        "amp": args.amp,
        "machine_gflops": args.rates,
        "warmup": args.warmup,
        "iters": args.iters,
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
