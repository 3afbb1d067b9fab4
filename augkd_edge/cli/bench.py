"""``augkd-edge bench``: latency reports for torch, ONNX Runtime, OpenVINO and TensorRT, and
``augkd-edge bench compare`` across machines or builds.

``bench`` is a click group whose default subcommand is ``run``, so both
``augkd-edge bench MODEL... --out DIR`` (what users type) and
``augkd-edge bench compare A.json B.json --out DIR`` work. This module turns
paths and options into measurement targets; measuring, statistics and the
report live in ``augkd_edge.export`` (latency, envinfo, bench_report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from augkd_edge.errors import UserError
from augkd_edge.export import latency

BACKENDS = ("torch", "ort", "trt", "openvino")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


class _DefaultRunGroup(click.Group):
    """A group where an argument that is not a subcommand name means ``run``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group("bench", cls=_DefaultRunGroup, context_settings={"help_option_names": ["-h", "--help"]})
def command() -> None:
    """Latency (and optionally accuracy) reports: `bench MODEL... --out DIR` runs a
    benchmark (same as `bench run`); `bench compare REPORT... --out DIR` lines reports up."""


def _int_list(value: str, option: str) -> list[int]:
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} {value!r}: give comma-separated integers such as 1,8,32.") from None
    if not items or min(items) < 1:
        raise UserError(f"{option} {value!r}: every value must be >= 1.")
    return sorted(set(items))


def _backend_of(path: Path) -> str:
    if path.suffix == ".onnx":
        return "ort"
    if path.suffix in ENGINE_SUFFIXES:
        return "trt"
    if path.suffix == ".xml":
        return "openvino"
    return "torch"  # a run folder or a model file


def _torch_target(path: Path, device: str, cuda_graphs: bool, precision: str) -> Any:
    from augkd_edge.export.latency import Target
    from augkd_edge.export.onnx import with_normalisation
    from augkd_edge.export.runtimes import TorchRunner
    from augkd_edge.rundir import load_student, resolve_model_path

    model_path = resolve_model_path(path)
    model, meta = load_student(model_path)
    deployable = with_normalisation(model, meta.mean, meta.std)  # every backend takes [0, 1] images
    memory = _TorchCudaMemory() if device == "cuda" else None
    return Target(model=model_path.name, backend="torch", device=device, precision=precision,
                  input_size=meta.input_size, device_memory=memory, info={"cuda_graphs": cuda_graphs},
                  open=lambda: TorchRunner(deployable, device=device, cuda_graphs=cuda_graphs, precision=precision))


def _ort_target(path: Path, device: str, threads: int | None, input_size: int | None) -> Any:
    from augkd_edge.export.latency import Target
    from augkd_edge.export.onnx import check_onnx
    from augkd_edge.export.runtimes import OrtRunner, onnx_precision

    shape = check_onnx(path).input_shape
    size = input_size or (shape[-1] if isinstance(shape[-1], int) else None)
    if size is None:
        raise UserError(f"{path}: the input's spatial size is symbolic; give --input-size.")
    return Target(model=path.name, backend="ort", device=device, precision=onnx_precision(path),
                  input_size=size, info={"ort_threads": threads},
                  open=lambda: OrtRunner(path, device=device, threads=threads))


def _openvino_target(path: Path, ov_device: str, threads: int | None, hint: str, input_size: int | None) -> Any:
    from augkd_edge.export.latency import Target
    from augkd_edge.export.openvino import OpenVinoRunner, ir_input_size, ir_precision

    size = input_size or ir_input_size(path)
    if size is None:
        raise UserError(f"{path}: the input's spatial size is symbolic; give --input-size.")
    return Target(model=path.name, backend="openvino", device=ov_device.lower(), precision=ir_precision(path),
                  input_size=size, info={"openvino_threads": threads, "openvino_hint": hint},
                  open=lambda: OpenVinoRunner(path, device=ov_device, threads=threads, hint=hint))


def _trt_target(path: Path, input_size: int | None) -> Any:
    from augkd_edge.export.latency import Target
    from augkd_edge.export.runtimes import TrtRunner
    from augkd_edge.export.trt_loader import read_engine_metadata

    precision = str(read_engine_metadata(path).get("precision", "unknown"))
    target = Target(model=path.name, backend="trt", device="cuda", precision=precision,
                    input_size=input_size, open=lambda: None, device_memory=_TorchCudaMemory())

    def open_engine() -> Any:
        runner = TrtRunner(path)
        if not target.input_size:  # the engine knows its input shape
            target.input_size = int(runner.engine.get_tensor_shape(runner.input_name)[-1])
        return runner

    target.open = open_engine
    return target


def _eval_split(source: Path, split: str, limit: int | None) -> Any:
    """The labelled split a run folder / model file recorded (rundir.split_arrays)."""
    from augkd_edge.export.latency import EvalSplit
    from augkd_edge.rundir import load_student, split_arrays

    _, meta = load_student(source)
    images, labels = split_arrays(meta, split)
    return EvalSplit(split, images[:limit], labels[:limit])


class _TorchCudaMemory:
    """Peak GPU memory through torch's allocator (torch and the torch-buffered TRT runner)."""

    name = "torch-max-allocated"

    def reset(self) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats()

    def peak_mb(self) -> float | None:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20


def _gpus(device: str) -> list[dict[str, Any]]:
    from augkd_edge.export.envinfo import nvidia_smi_gpus

    gpus = nvidia_smi_gpus()
    if gpus or device != "cuda":
        return gpus
    import torch

    if not torch.cuda.is_available():
        return []
    props = torch.cuda.get_device_properties(0)
    return [{"name": props.name, "driver": None, "compute_capability": f"{props.major}.{props.minor}",
             "memory_total_mb": props.total_memory / 2**20}]


@command.command("run")
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--backend", "backends", default="torch,ort,trt,openvino", show_default=True,
              help="Backends to measure (comma list). Each MODEL belongs to one: a run folder or .pt -> torch, "
                   ".onnx -> ort (FP32 or QDQ INT8), .engine/.plan -> trt, .xml (OpenVINO IR) -> openvino; "
                   "models of other backends are skipped.")
@click.option("--ov-device", default="CPU", show_default=True,
              help="OpenVINO device for .xml models (CPU, GPU, NPU, AUTO; refused with the list when absent).")
@click.option("--ov-hint", type=click.Choice(["LATENCY", "THROUGHPUT"]), default="LATENCY", show_default=True,
              help="OpenVINO performance hint.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where torch and ONNX Runtime run (TensorRT is always cuda).")
@click.option("--batch", "batches", default="1,8,32", show_default=True, help="Batch sizes (comma list).")
@click.option("--warmup", type=click.IntRange(min=0), default=latency.DEFAULT_WARMUP, show_default=True,
              help="Untimed iterations before measuring each (backend, batch) cell.")
@click.option("--iters", type=click.IntRange(min=1), default=None,
              help=f"Timed iterations per cell [default: {latency.DEFAULT_ITERS} unless --seconds].")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"Time budget per cell instead of --iters (at least {latency.MIN_BUDGET_ITERS} samples).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch, ONNX Runtime and OpenVINO (fix it for comparable numbers).")
@click.option("--cuda-graphs", is_flag=True, help="Replay the torch model as a CUDA graph (--device cuda).")
@click.option("--torch-precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="Precision of the torch model (fp16 needs --device cuda).")
@click.option("--input-size", type=click.IntRange(min=8), default=None,
              help="Input resolution for an ONNX/engine whose shape does not say it.")
@click.option("--eval", "eval_source", type=click.Path(exists=True, path_type=Path), default=None,
              metavar="RUN_OR_MODEL", help="Also report top-1 per backend on this model's recorded split.")
@click.option("--eval-split", default="test", show_default=True, help="Which recorded split --eval uses.")
@click.option("--eval-limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N images of the split (quicker).")
@click.option("--label", default=None, help="Machine/build label stored in the report (no hostname is recorded).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for report.json, report.md and report.html.")
def run(models: tuple[Path, ...], backends: str, ov_device: str, ov_hint: str, device: str, batches: str,
        warmup: int, iters: int | None, seconds: float | None, threads: int | None, cuda_graphs: bool,
        torch_precision: str, input_size: int | None, eval_source: Path | None, eval_split: str,
        eval_limit: int | None, label: str | None, out_dir: Path) -> None:
    """Measure latency, throughput and memory of MODEL(s) over batch sizes and write a report."""
    from tqdm import tqdm

    from augkd_edge import __version__
    from augkd_edge.checkpoint import check_writable_dir
    from augkd_edge.export import bench_render, bench_report, envinfo

    check_writable_dir(out_dir, "--out")
    wanted = [b.strip() for b in backends.split(",") if b.strip()]
    unknown = sorted(set(wanted) - set(BACKENDS))
    if unknown:
        raise UserError(f"--backend {','.join(unknown)}: unknown; choose from {', '.join(BACKENDS)}.")
    if iters is not None and seconds is not None:
        raise UserError("--iters and --seconds exclude each other; give one.")
    if (cuda_graphs or torch_precision == "fp16") and device != "cuda":
        raise UserError("--cuda-graphs and --torch-precision fp16 need --device cuda.")
    budget = latency.Budget.from_options(warmup, iters, seconds)
    batch_list = _int_list(batches, "--batch")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    targets = []
    for path in models:
        backend = _backend_of(path)
        if backend not in wanted:
            click.echo(f"skipping {path}: it is a {backend} model and --backend is {backends}", err=True)
        elif backend == "torch":
            targets.append(_torch_target(path, device, cuda_graphs, torch_precision))
        elif backend == "ort":
            targets.append(_ort_target(path, device, threads, input_size))
        elif backend == "openvino":
            targets.append(_openvino_target(path, ov_device, threads, ov_hint, input_size))
        else:
            targets.append(_trt_target(path, input_size))
    if not targets:
        raise UserError(f"no MODEL matches --backend {backends}; see `augkd-edge bench run --help`.")
    split = _eval_split(eval_source, eval_split, eval_limit) if eval_source is not None else None

    rows = latency.run_grid(
        targets, batch_list, budget, eval_split=split,
        progress=lambda cells: tqdm(cells, desc="bench", unit="cell"),
        on_error=lambda msg: click.echo(f"failed: {msg}", err=True),
    )
    import torch

    environment = envinfo.capture(label=label, gpus=_gpus(device),
                                  threads={"torch_threads": torch.get_num_threads(), "ort_threads": threads})
    report = bench_report.build_report(rows, environment, budget.as_dict(), "augkd-edge bench", __version__)
    for written in bench_render.write_report(report, out_dir):
        click.echo(f"wrote {written}")
    _print_int8_speedups(rows)
    failed = sum("error" in r for r in rows)
    if failed == len(rows):
        raise UserError(f"every cell failed (see {out_dir / 'report.md'}).")


def _print_int8_speedups(rows: list[dict[str, Any]]) -> None:
    """INT8 is asked for speed: say what it gave here, and warn where it gave none."""
    from augkd_edge.export.speedup import int8_pairs

    for p in int8_pairs(rows):
        click.echo(f"INT8 {p['int8_model']} vs FP32 {p['fp32_model']} [{p['backend']}/{p['device']}] batch "
                   f"{p['batch']}: median {p['int8_median_ms']:.3f} vs {p['fp32_median_ms']:.3f} ms, "
                   f"{p['speedup']:.2f}x")
        if p["speedup"] < 1.0:
            click.echo(f"warning: INT8 is not faster than FP32 here for batch {p['batch']} ({p['speedup']:.2f}x); "
                       "for ONNX Runtime on CPU export with --int8-for ort-cpu, or ship FP32.", err=True)


@command.command("compare")
@click.argument("reports", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--baseline", type=click.IntRange(min=0), default=0, show_default=True,
              help="Position (0-based) of the report the others are compared with.")
@click.option("--match", default="model,backend,device,precision", show_default=True,
              help="Fields (besides batch) that must agree for rows to line up; 'batch' alone compares "
                   "different builds, e.g. a board's TensorRT engine with a workstation's ONNX.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for compare.json, compare.md and compare.html.")
def compare(reports: tuple[Path, ...], baseline: int, match: str, out_dir: Path) -> None:
    """Put REPORT(s) (report.json files or their folders) in one table and plot, with speedups
    against the baseline."""
    from augkd_edge.checkpoint import check_writable_dir
    from augkd_edge.export import bench_compare, bench_report

    check_writable_dir(out_dir, "--out")
    loaded = [bench_report.load_report(p) for p in reports]
    names = _unique_names([bench_report.report_name(r, str(p)) for r, p in zip(loaded, reports)])
    fields = [f.strip() for f in match.split(",") if f.strip() and f.strip() != "batch"]
    comparison = bench_compare.compare(loaded, names, baseline, match=fields)
    for written in bench_compare.write_comparison(comparison, loaded, out_dir):
        click.echo(f"wrote {written}")


def _unique_names(names: list[str]) -> list[str]:
    """Two reports with the same label still need two columns."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return out
