"""Fused Triton kernels vs eager PyTorch vs torch.compile, and one Module 3 step with kernels on/off.

Usage (GPU): ``python benchmarks/kernels.py [--batches 2048,128] [--dtypes fp32,bf16] [--classes 31,1000]
[--peak-gbs 3000] [--no-compile] [--out benchmarks/results]`` writes ``kernels-<gpu>.json`` and ``.md``
under ``--out``. For every op it reports
the median time (``triton.testing.do_bench``), the speed-up of the fused kernel
over eager and over ``torch.compile`` of the same reference, and the achieved
bandwidth: the bytes the op must move at least (inputs read once, outputs written
once; the same count for all three implementations) over the median time, also as
a share of the GPU's peak (H100 3.0 TB/s, H200 4.3 TB/s as measured on the
project's machines; ``--peak-gbs`` for other cards). Each fused result is checked
against the eager one before it is timed, so a fast wrong kernel cannot pass.

The issue's target: fused >= 2x eager and >= torch.compile; ``meets_target`` says
per case. Without a CUDA device the script exits with status 2. ``--dry-run``
runs every code path on CPU through Triton's interpreter at tiny sizes (no
timing worth reading, ``torch.compile`` with the eager backend) so CI can check
the script itself; it writes only when ``--out`` is given.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

SCHEMA = "augkd-edge/kernels-bench/1"
PEAK_GBS = {"H200": 4300.0, "H100": 3000.0}  # measured peaks on the project's machines (issue 4)
LATENT = 100  # AuG-KD latent size L
IMAGE = (3, 32, 32)  # the paper's images
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


@dataclass
class Case:
    """One op at one size: three implementations of the same computation."""

    op: str
    mode: str
    batch: int
    shape: str
    dtype: str
    bytes: int
    fused: Callable[[], Any]
    eager: Callable[[], Any]
    compiled: Callable[[], Any] | None
    results: dict[str, Any] = field(default_factory=dict)


def _parse_list(text: str, kind: type) -> list[Any]:
    return [kind(v) for v in text.split(",") if v.strip()]


def peak_bandwidth(device_name: str, override: float | None) -> float | None:
    """Peak memory bandwidth in GB/s from ``--peak-gbs`` or the device name (None if unknown)."""
    if override is not None:
        return override
    for key, gbs in PEAK_GBS.items():
        if key in device_name.upper():
            return gbs
    return None


def measure(fn: Callable[[], Any], cuda: bool, warmup: int, rep: int) -> float:
    """Median milliseconds per call."""
    if cuda:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    start = time.perf_counter()  # CPU dry run: one call, no warm-up; the number only proves the path runs
    fn()
    return (time.perf_counter() - start) * 1e3


def _runner(fn: Callable[..., Any], inputs: Sequence[Any], backward: bool) -> Callable[[], Any]:
    """Call ``fn(*inputs)``; with ``backward``, also the gradients w.r.t. the inputs that require grad.

    ``torch.autograd.grad`` rather than ``.backward()`` so repeated calls do not
    add an accumulation kernel into ``.grad``.
    """
    import torch

    if not backward:
        def forward_only() -> Any:
            with torch.no_grad():
                return fn(*inputs)

        return forward_only
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    grads_out = [torch.ones_like(o) for o in _tuple(fn(*inputs))]

    def forward_backward() -> Any:
        outs = _tuple(fn(*inputs))
        return outs + torch.autograd.grad(outs, leaves, grads_out)

    return forward_backward


def _tuple(out: Any) -> tuple[Any, ...]:
    return out if isinstance(out, tuple) else (out,)


def _with_backend(name: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    from augkd_edge.kernels import backend

    def run() -> Any:
        with backend(name):
            return fn()

    return run


def build_cases(batches: list[int], dtypes: list[str], classes: list[int], device: str, compile_backend: str | None) -> list[Case]:
    """The ops at the paper's batch sizes: latent [B, 100], images [B, 3, 32, 32], logits [B, K]."""
    import torch

    # Static shapes, one compiled graph per size and dtype (the fair baseline: what a
    # training loop with a fixed batch gets); lift the recompile cap so no case falls
    # back to dynamic shapes or eager.
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, max(64, getattr(torch._dynamo.config, key)))

    def compiled(fn: Callable[..., Any]) -> Callable[..., Any] | None:
        return None if compile_backend is None else torch.compile(fn, backend=compile_backend, dynamic=False)

    cases: list[Case] = []

    def add(op: str, mode: str, batch: int, shape: str, dtype: str, nbytes: int,
            public: Callable[..., Any], reference: Callable[..., Any], inputs: Sequence[Any]) -> None:
        backward = mode == "fwd+bwd"
        ref_compiled = compiled(reference)
        cases.append(Case(op, mode, batch, shape, dtype, nbytes,
                          fused=_with_backend("triton", _runner(public, inputs, backward)),
                          eager=_runner(reference, inputs, backward),
                          compiled=None if ref_compiled is None else _runner(ref_compiled, inputs, backward)))

    for name in dtypes:
        for b in batches:
            _add_cases(add, b, name, device, classes)
    return cases


def _add_cases(add: Callable[..., None], b: int, name: str, device: str, classes: list[int]) -> None:
    """The cases of batch ``b`` and dtype ``name``: latent_mix, mix_normalize, and per class count the losses."""
    import torch

    from augkd_edge import kernels
    from augkd_edge.kernels.distill_loss import distill_loss_reference
    from augkd_edge.kernels.energy import energy_score_reference
    from augkd_edge.kernels.latent_mix import latent_mix_reference
    from augkd_edge.kernels.mix_normalize import mix_normalize_reference

    dt = getattr(torch, DTYPES[name])
    size = torch.finfo(dt).bits // 8
    z, psi, m = (torch.randn(b, LATENT, device=device, dtype=dt) for _ in range(3))
    m, n = torch.sigmoid(m), b * LATENT
    add("latent_mix", "fwd", b, f"[{b},{LATENT}]", name, 5 * n * size,
        lambda z_, p_, m_: kernels.latent_mix(z_, p_, m_, 0.3),
        lambda z_, p_, m_: latent_mix_reference(z_, p_, m_, 0.3), (z, psi, m))
    leaves = [t.clone().requires_grad_() for t in (z, psi, m)]
    add("latent_mix", "fwd+bwd", b, f"[{b},{LATENT}]", name, 13 * n * size,
        lambda z_, p_, m_: kernels.latent_mix(z_, p_, m_, 0.3),
        lambda z_, p_, m_: latent_mix_reference(z_, p_, m_, 0.3), leaves)

    x, g = (torch.rand(b, *IMAGE, device=device, dtype=dt) for _ in range(2))
    # separate output buffers, or the correctness check would compare a buffer with itself
    out_fused, out_ref = (torch.empty(2 * b, *IMAGE, device=device, dtype=dt) for _ in range(2))
    mean_t, std_t = torch.tensor(MEAN, device=device), torch.tensor(STD, device=device)
    add("mix_normalize", "fwd", b, f"2x[{b},3,32,32]", name, 4 * x.numel() * size,
        lambda x_, g_, o=out_fused: kernels.mix_normalize(x_, g_, 0.3, MEAN, STD, out=o),
        lambda x_, g_, o=out_ref, mt=mean_t, st=std_t: mix_normalize_reference(x_, g_, 0.3, mt, st, o),
        (x, g))

    for k in classes:
        logits = (torch.randn(b, k, device=device) * 4).to(dt).requires_grad_()
        add("energy_score", "fwd+bwd", b, f"[{b},{k}]", name, 3 * b * k * size + 4 * b,
            kernels.energy_score, energy_score_reference, (logits,))
        s = (torch.randn(b, k, device=device) * 4).to(dt).requires_grad_()
        t = (torch.randn(b, k, device=device) * 4).to(dt)
        y = torch.randint(0, k, (b,), device=device)
        add("distill_loss", "fwd+bwd", b, f"[{b},{k}]", name, 3 * b * k * size + 8 * b,
            lambda s_, t_, y_: kernels.distill_loss(s_, t_, y_, 0.5, 10.0),
            lambda s_, t_, y_: distill_loss_reference(s_, t_, y_, 0.5, 10.0), (s, t, y))


def max_difference(a: Any, b: Any) -> float:
    """Largest absolute difference over all outputs and gradients of two runs."""
    return max(float((x.detach().float() - y.detach().float()).abs().max()) for x, y in zip(_tuple(a), _tuple(b)))


def run_case(case: Case, cuda: bool, peak: float | None, warmup: int, rep: int) -> None:
    """Check the fused result against eager, then time all implementations.

    ``meets_target`` is only judged on a GPU: interpreter timings say nothing.
    """
    case.results["max_abs_diff"] = max_difference(case.fused(), case.eager())
    impls = {"fused": case.fused, "eager": case.eager, "compile": case.compiled}
    for name, fn in impls.items():
        if fn is None:
            continue
        ms = measure(fn, cuda, warmup, rep)
        gbs = case.bytes / (ms * 1e-3) / 1e9
        case.results[name] = {"ms": ms, "gbs": gbs, "pct_peak": None if peak is None else 100 * gbs / peak}
    fused_ms = case.results["fused"]["ms"]
    case.results["speedup_vs_eager"] = case.results["eager"]["ms"] / fused_ms
    case.results["meets_target"] = None
    if "compile" in case.results:
        case.results["speedup_vs_compile"] = case.results["compile"]["ms"] / fused_ms
        if cuda:
            case.results["meets_target"] = (
                case.results["speedup_vs_eager"] >= 2 and case.results["speedup_vs_compile"] >= 1
            )


def train_step_benchmark(batch: int, classes: int, dtype: str, device: str, cuda: bool, warmup: int, rep: int,
                         teacher_arch: str = "resnet34") -> dict[str, Any]:
    """One Module 3 step (mix_normalize -> teacher and student forward -> distill_loss -> backward -> Adam).

    The encoder, AnchorNet and generator are frozen and outside the kernels'
    scope: the latents and generated images are fixed random stand-ins, so the
    difference between kernels on and off is the ops' share of a real step.
    """
    import torch

    from augkd_edge.kernels import backend, distill_loss, latent_mix, mix_normalize
    from augkd_edge.models.zoo import build_classifier

    student = build_classifier("mobilenet_v3_small", classes).to(device)
    teacher = build_classifier(teacher_arch, classes).to(device).eval().requires_grad_(False)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3, weight_decay=1e-4)
    x = torch.rand(batch, *IMAGE, device=device)
    g = torch.rand(batch, *IMAGE, device=device)
    z, psi = torch.randn(batch, LATENT, device=device), torch.randn(batch, LATENT, device=device)
    m = torch.rand(batch, LATENT, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    yy = torch.cat([y, y])
    buf = torch.empty(2 * batch, *IMAGE, device=device)
    amp = torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step() -> None:
        with torch.no_grad():
            latent_mix(z, psi, m, 0.3)  # z_m would feed the generator, whose output g stands in for
            images = mix_normalize(x, g, 0.3, MEAN, STD, out=buf)
            with amp:
                t_logits = teacher(images)
        with amp:
            s_logits = student(images)
        loss = distill_loss(s_logits, t_logits, yy, 0.5, 10.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    result: dict[str, Any] = {"batch": batch, "dtype": dtype, "classes": classes,
                              "student": "mobilenet_v3_small", "teacher": teacher_arch}
    for label, name in (("kernels_on", "triton"), ("kernels_off", "reference")):
        # a step takes tens of ms: a longer window than the ops' so the median has samples
        ms = measure(_with_backend(name, step), cuda, 20 * warmup, 20 * rep)
        result[label] = {"ms": ms, "images_per_s": 2 * batch / (ms * 1e-3)}
    result["speedup"] = result["kernels_off"]["ms"] / result["kernels_on"]["ms"]
    return result


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def to_markdown(report: dict[str, Any]) -> str:
    """Tables for the README / issue: ops, then the end-to-end step."""
    lines = [
        f"# Fused kernels on {report['device']}",
        "",
        f"torch {report['torch']}, triton {report['triton']}, peak bandwidth "
        f"{_fmt(report['peak_gbs'], '.0f')} GB/s{' (DRY RUN: CPU interpreter, timings meaningless)' if report['dry_run'] else ''}.",
        "Median ms per call; GB/s = minimum bytes moved / time; target: fused >= 2x eager and >= compile.",
        "",
        "| op | mode | shape | dtype | fused ms | eager ms | compile ms | x eager | x compile | fused GB/s | % peak | max diff | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["cases"]:
        r = c["results"]
        comp = r.get("compile", {})
        lines.append(
            f"| {c['op']} | {c['mode']} | {c['shape']} | {c['dtype']} | {_fmt(r['fused']['ms'])} | {_fmt(r['eager']['ms'])} | "
            f"{_fmt(comp.get('ms'))} | {_fmt(r['speedup_vs_eager'], '.2f')} | {_fmt(r.get('speedup_vs_compile'), '.2f')} | "
            f"{_fmt(r['fused']['gbs'], '.1f')} | {_fmt(r['fused']['pct_peak'], '.1f')} | {r['max_abs_diff']:.2e} | "
            f"{'-' if r['meets_target'] is None else ('yes' if r['meets_target'] else 'no')} |"
        )
    if report["train_step"]:
        lines += ["", "## Module 3 training step (MobileNet-V3-Small student, ResNet teacher, 32x32)", "",
                  "| batch (real+mixed) | dtype | kernels on ms | kernels off ms | speed-up | images/s on |",
                  "|---|---|---|---|---|---|"]
        for t in report["train_step"]:
            lines.append(f"| {t['batch']}+{t['batch']} | {t['dtype']} | {_fmt(t['kernels_on']['ms'], '.2f')} | "
                         f"{_fmt(t['kernels_off']['ms'], '.2f')} | {t['speedup']:.3f} | {t['kernels_on']['images_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@click.command(help=__doc__)
@click.option("--batches", default="2048,128", show_default=True, help="comma-separated batch sizes")
@click.option("--dtypes", default="fp32,bf16", show_default=True, help="comma-separated: fp32, bf16")
@click.option("--classes", default="31,1000", show_default=True, help="logit widths K for energy/distill")
@click.option("--peak-gbs", type=float, default=None, help="peak memory bandwidth in GB/s (default: from the GPU name)")
@click.option("--no-compile", is_flag=True, help="skip the torch.compile baseline (saves compile time)")
@click.option("--no-train-step", is_flag=True, help="skip the end-to-end Module 3 step")
@click.option("--warmup", default=25, show_default=True, help="do_bench warm-up in ms")
@click.option("--rep", default=100, show_default=True, help="do_bench measuring time in ms")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="results folder [default: benchmarks/results; a dry run writes only if given]")
@click.option("--dry-run", is_flag=True, help="CPU, Triton interpreter, tiny sizes: checks the script, not the speed")
def main(batches: str, dtypes: str, classes: str, peak_gbs: float | None, no_compile: bool, no_train_step: bool,
         warmup: int, rep: int, out: Path | None, dry_run: bool) -> None:
    if dry_run:
        # Must precede the first `import triton`: Triton fixes its interpreter mode at import.
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    cuda = torch.cuda.is_available() and not dry_run
    if not cuda and not dry_run:
        click.echo("benchmarks/kernels.py needs a CUDA GPU (none visible to torch); "
                   "use --dry-run to exercise the script on CPU", err=True)
        sys.exit(2)
    torch.manual_seed(0)
    device = "cuda" if cuda else "cpu"
    if dry_run:
        torch.set_num_threads(1)  # CI's 2 cores are shared; a dry run is not a measurement
        batch_list, class_list, compile_backend = [5], [31], None if no_compile else "eager"
        step_batch, teacher_arch = 2, "resnet18"
    else:
        batch_list, class_list = _parse_list(batches, int), _parse_list(classes, int)
        compile_backend = None if no_compile else "inductor"
        step_batch, teacher_arch = max(batch_list), "resnet34"
    dtype_list = _parse_list(dtypes, str)
    unknown = set(dtype_list) - set(DTYPES)
    if unknown:
        raise click.BadParameter(f"unknown dtype(s) {sorted(unknown)}; use fp32 and/or bf16", param_hint="--dtypes")
    device_name = torch.cuda.get_device_name() if cuda else f"CPU interpreter dry run ({platform.machine()})"
    peak = peak_bandwidth(device_name, peak_gbs)
    if cuda and peak is None:
        click.echo(f"unknown peak bandwidth for {device_name!r}: % of peak left empty (pass --peak-gbs)", err=True)

    import triton

    cases = build_cases(batch_list, dtype_list, class_list, device, compile_backend)
    for case in cases:
        run_case(case, cuda, peak, warmup, rep)
        r = case.results
        click.echo(f"{case.op:14s} {case.mode:8s} {case.shape:18s} {case.dtype}: fused {r['fused']['ms']:.4f} ms, "
                   f"x{r['speedup_vs_eager']:.2f} eager, x{_fmt(r.get('speedup_vs_compile'), '.2f')} compile, "
                   f"{r['fused']['gbs']:.1f} GB/s, diff {r['max_abs_diff']:.1e}")
    steps = [] if no_train_step else _train_steps(dtype_list, step_batch, class_list[0], device, cuda, warmup, rep,
                                                    teacher_arch)
    report = {
        "schema": SCHEMA, "device": device_name, "dry_run": dry_run, "peak_gbs": peak, "torch": torch.__version__,
        "triton": triton.__version__, "timing": "triton.testing.do_bench median" if cuda else "perf_counter, one call",
        "cases": [{"op": c.op, "mode": c.mode, "batch": c.batch, "shape": c.shape, "dtype": c.dtype, "bytes": c.bytes,
                   "results": c.results} for c in cases],
        "train_step": steps,
    }
    if out is None and dry_run:
        return
    from augkd_edge.checkpoint import write_text_atomic

    folder = out if out is not None else Path(__file__).resolve().parent / "results"
    stem = f"kernels-{'dry-run' if dry_run else slug(device_name)}"
    write_text_atomic(json.dumps(report, indent=2) + "\n", folder / f"{stem}.json")
    write_text_atomic(to_markdown(report), folder / f"{stem}.md")
    click.echo(f"wrote {folder / stem}.json and .md")



def _train_steps(dtypes: list[str], batch: int, classes: int, device: str, cuda: bool, warmup: int, rep: int,
                 teacher_arch: str) -> list[dict[str, Any]]:
    """One whole-training-step comparison (kernels on / off) per dtype."""
    steps = []
    for name in dtypes:
        steps.append(train_step_benchmark(batch, classes, name, device, cuda, warmup, rep, teacher_arch))
        click.echo(f"train step {name}: on {steps[-1]['kernels_on']['ms']:.2f} ms, "
                   f"off {steps[-1]['kernels_off']['ms']:.2f} ms, x{steps[-1]['speedup']:.3f}")
    return steps


if __name__ == "__main__":
    main()
