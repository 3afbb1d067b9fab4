"""``augkd-edge sweep``: students x precisions through distill -> export -> bench, then the
accuracy-vs-latency table, plot, Pareto front and budget choice.

Parses and validates the options (every bad input is one line and exit 2 before any
work), then calls ``augkd_edge.sweep.loop``. The schema of ``sweep.json`` is in
``augkd_edge/sweep/__init__.py``.
"""

from __future__ import annotations

import difflib
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import click

from augkd_edge.errors import UserError
from augkd_edge.sweep.records import PRECISIONS

# Flags the sweep sets itself for every distill / export child; given again they would contradict it.
_OWNED = {"distill": ("--student", "--out", "--resume", "--method", "--preset", "--seed", "--config", "--cache-dir"),
          "export": ("--out", "--onnx", "--int8", "--trt", "--threads")}


class SweepFailed(UserError):
    """Every candidate failed: the outputs exist and say why, but there is nothing to choose from."""

    exit_code = 3


def _names(value: str, option: str) -> list[str]:
    """A comma list without blanks or repeats (a repeat would run and count a candidate twice)."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise UserError(f"{option}: empty list; give comma-separated names, e.g. {option} "
                        f"{'mobilenet_v3_small,resnet18' if option == '--students' else 'fp32,int8'}.")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"{option} lists {', '.join(twice)} more than once; give each once.")
    return names


def parse_students(value: str) -> list[str]:
    """Torchvision classification model names (or ``timm:NAME``), checked before minutes of distillation."""
    import torchvision

    from augkd_edge.models.zoo import is_timm, model_builder

    students = _names(value, "--students")
    known = set(torchvision.models.list_models(module=torchvision.models))
    for name in students:
        if is_timm(name):
            model_builder(name)  # names the missing extra or close timm names
        elif name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"did you mean {', '.join(near)}?" if near else "e.g. mobilenet_v3_small, resnet18"
            raise UserError(f"--students {name}: not a torchvision classification model; {hint} "
                            f"(all: torchvision.models.list_models(module=torchvision.models); timm models "
                            f"as timm:NAME).")
    return students


def parse_precisions(value: str) -> list[str]:
    """fp32 and/or int8: the precisions ``export`` makes for ONNX Runtime and TensorRT alike."""
    precisions = _names(value, "--precision")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise UserError(f"--precision {','.join(bad)}: unknown; choose from {', '.join(PRECISIONS)} "
                        f"(e.g. --precision fp32,int8).")
    return precisions


def _child_args(value: str, command: str) -> tuple[str, ...]:
    """Extra flags for every distill / export child, refusing those the sweep sets itself."""
    try:
        args = tuple(shlex.split(value))
    except ValueError as exc:
        raise UserError(f"--{command}-args {value!r}: {exc}; quote it as one shell string.") from None
    owned = [a for a in args if a.split("=")[0] in _OWNED[command]]
    if owned:
        raise UserError(f"--{command}-args: {', '.join(owned)} is set by the sweep itself; use the sweep's own "
                        f"option (see `augkd-edge sweep --help`).")
    return args


def _distill_choices(name: str) -> list[str]:
    """The choices ``distill`` offers for an option, so the sweep accepts every method and preset it does."""
    from augkd_edge.cli import distill

    param = next(p for p in distill.command.params if p.name == name)
    return list(param.type.choices)  # type: ignore[attr-defined]


def _check_choice(value: str, name: str) -> str:
    """--method / --preset checked against distill's own choices before any child runs."""
    choices = _distill_choices(name)
    if value not in choices:
        raise UserError(f"--{name} {value}: unknown; choose from {', '.join(choices)}.")
    return value


@click.command("sweep")
@click.option("--students", required=True,
              help="Comma list of torchvision student names, e.g. mobilenet_v3_small,shufflenet_v2_x0_5,resnet18.")
@click.option("--precision", "precision_text", default="fp32,int8", show_default=True,
              help="Comma list of precisions: fp32, int8 (export's INT8 QDQ with its accuracy gate).")
@click.option("--method", default="augkd", show_default=True, help="distill --method, for every student.")
@click.option("--preset", default="quick", show_default=True, help="distill --preset, for every student.")
@click.option("--seed", type=int, default=0, show_default=True, help="distill --seed.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="distill --config FILE for every student (e.g. fewer epochs).")
@click.option("--distill-args", default="", help="More distill flags, one shell string (e.g. '--shots 5').")
@click.option("--export-args", default="", help="More export flags, one shell string (e.g. '--max-drop 2').")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="distill --cache-dir (where the shared teacher is cached) [default: distill's].")
@click.option("--backend", type=click.Choice(["ort", "trt", "openvino"]), default="ort", show_default=True,
              help="Latency backend: ONNX Runtime, TensorRT (export --trt builds the engine where TensorRT "
                   "exists; elsewhere measure on the target and pass --latency-from), or OpenVINO on its CPU "
                   "device (export --openvino; needs augkd-edge[openvino]).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where ONNX Runtime runs (TensorRT is always cuda).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Batch size measured.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="ONNX Runtime threads for export checks and latency [default: ONNX Runtime's choice].")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="bench --warmup.")
@click.option("--iters", type=click.IntRange(min=1), default=100, show_default=True, help="bench --iters.")
@click.option("--latency-budget-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Mark the most accurate candidate whose median latency is within this many ms as chosen.")
@click.option("--latency-from", type=click.Path(path_type=Path), default=None,
              help="A bench report.json made on the target: its latencies replace this machine's, matched to "
                   "candidates by model sha256 or file name (bench the sweep's models/ files there).")
@click.option("--retry-failed", is_flag=True, help="Run failed candidates again instead of keeping their record.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Sweep folder; rerunning the same command resumes it (finished candidates are kept).")
def command(students: str, precision_text: str, method: str, preset: str, seed: int, config: Path | None,
            distill_args: str, export_args: str, cache_dir: Path | None, backend: str, device: str, batch: int,
            threads: int | None, warmup: int, iters: int, latency_budget_ms: float | None,
            latency_from: Path | None, retry_failed: bool, out_dir: Path) -> None:
    """Distill, export and measure several students x precisions and pick one for a latency budget.

    Writes OUT/sweep.json, sweep.md, sweep.html (with the accuracy-vs-latency plot and
    Pareto front) and sweep.png. Rerun the same command to resume an interrupted sweep.
    """
    settings = _settings(locals())
    student_list, precisions = parse_students(students), parse_precisions(precision_text)
    settings.update(students=student_list, precisions=precisions)
    _run(settings, out_dir, retry_failed)


def _settings(opts: dict[str, Any]) -> dict[str, Any]:
    """Validated settings, recorded in sweep.json; raises UserError on any bad input before work starts."""
    from augkd_edge.checkpoint import check_writable_dir
    from augkd_edge.export.tensorrt import sha256_file
    from augkd_edge.sweep.select import load_bench_report

    _check_choice(opts["method"], "method")
    _check_choice(opts["preset"], "preset")
    if opts["latency_from"] is not None:
        load_bench_report(opts["latency_from"])  # a missing or unreadable report fails now, not after the runs
    check_writable_dir(opts["out_dir"], "--out")
    config = opts["config"]
    return {
        "method": opts["method"], "preset": opts["preset"], "seed": opts["seed"],
        "config": str(config) if config else None,
        "config_sha256": sha256_file(config) if config else None,
        "distill_args": list(_child_args(opts["distill_args"], "distill")),
        "export_args": list(_child_args(opts["export_args"], "export")),
        "cache_dir": str(opts["cache_dir"]) if opts["cache_dir"] else None,
        "backend": opts["backend"], "device": opts["device"], "batch": opts["batch"], "threads": opts["threads"],
        "warmup": opts["warmup"], "iters": opts["iters"], "latency_budget_ms": opts["latency_budget_ms"],
        "latency_from": str(opts["latency_from"]) if opts["latency_from"] else None,
    }


def _stop(signum: int, frame: Any) -> None:
    """SIGTERM as Ctrl-C: subprocess.run then kills the running child instead of orphaning it."""
    raise KeyboardInterrupt(f"signal {signum}")


def _run(settings: dict[str, Any], out_dir: Path, retry_failed: bool) -> None:
    """Run the pending candidates with a progress bar, then write the outputs and say where they are."""
    from tqdm import tqdm

    from augkd_edge.sweep import loop
    from augkd_edge.sweep.records import Layout
    from augkd_edge.sweep.runner import Plan

    layout = Layout(out_dir)
    plan = Plan(layout=layout, method=settings["method"], preset=settings["preset"], seed=settings["seed"],
                config=Path(settings["config"]) if settings["config"] else None,
                cache_dir=Path(settings["cache_dir"]) if settings["cache_dir"] else None,
                distill_args=tuple(settings["distill_args"]), export_args=tuple(settings["export_args"]),
                backend=settings["backend"], device=settings["device"], batch=settings["batch"],
                threads=settings["threads"], warmup=settings["warmup"], iters=settings["iters"])
    students, precisions = settings["students"], settings["precisions"]
    command_line = "augkd-edge " + shlex.join(sys.argv[1:])
    signal.signal(signal.SIGTERM, _stop)  # a terminated sweep stops its child too (subprocess.run kills it)
    try:
        loop.run_all(plan, settings, students, precisions, retry_failed, say=tqdm.write,
                     progress=lambda n: tqdm(total=n, unit="candidate", file=sys.stderr, dynamic_ncols=True))
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; rerun the same command to resume (finished candidates in "
                   f"{layout.out / 'candidates'} are kept).", err=True)
        sys.exit(130)
    latency_from = Path(settings["latency_from"]) if settings["latency_from"] else None
    doc = loop.write_outputs(layout, settings, command_line, students, precisions, latency_from, say=click.echo)
    click.echo(f"wrote {layout.out / 'sweep.json'}, sweep.md, sweep.html")
    if not any(e["status"] == "ok" for e in doc["candidates"]):
        raise SweepFailed(f"no candidate finished; the reasons are in {layout.out / 'sweep.md'}.")
