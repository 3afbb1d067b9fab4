"""``augkd-edge export``: a trained student -> ONNX (+ INT8 QDQ, + TensorRT engine or bundle).

Glue only: resolve the model file and its recorded student-domain splits
(``augkd_edge.rundir``), then call ``augkd_edge.export``. Every step that can
disagree with the trained model is checked before anything is called done:
ONNX Runtime vs PyTorch parity, the INT8 accuracy drop, TensorRT vs ONNX Runtime.

Exit codes: 0 done; 2 a user mistake (bad path, corrupt or mismatched model
file, impossible option); 3 a check failed (parity beyond tolerance, INT8 drop
over --max-drop without --force, TensorRT-unsupported operators with --trt).
``export.json`` is written in every case where figures exist, so a failure can
be inspected.

``export.json`` (``"format": "augkd-edge/export"``, ``"version": 1``):
``source`` (model file, its sha256, arch, classes, data spec); ``normalisation``
(``in_graph: true``, mean, std); ``class_names``; ``opset``, ``exporter``,
``batch`` ("dynamic" or N); ``input`` / ``output`` (name, shape, dtype);
``operators``; ``parity`` (split, images, max_abs_diff, max_rel_diff,
top1_agreement, atol, rtol, logit_scale = the largest |PyTorch logit|,
tolerance = atol + rtol * logit_scale, min_agreement, passed); ``int8``
(calibration method, split and image count, fp32_top1, int8_top1, drop_points, max_drop_points,
accepted, forced); ``tensorrt`` (settings incl. profile and precision,
op_support with the TensorRT version of the operator list and offending nodes,
build_script, trtexec, available, and with an engine: its metadata and
parity); ``files`` (name -> sha256, bytes, precision); ``tools`` (versions of
augkd_edge, python, torch, onnx, onnxscript, onnxruntime, tensorrt or null).
"""

from __future__ import annotations

import dataclasses
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from augkd_edge.errors import UserError


class ExportCheckFailed(UserError):
    """A measured check failed: the files exist but must not be deployed."""

    exit_code = 3


def _batch_option(value: str) -> int | None:
    if value == "dynamic":
        return None
    try:
        batch = int(value)
    except ValueError:
        raise UserError(f"--batch {value!r}: give 'dynamic' or a positive integer.") from None
    if batch < 1:
        raise UserError(f"--batch {value}: a fixed batch must be >= 1.")
    return batch


def tool_versions() -> dict[str, str | None]:
    """Versions that change exported graphs or their numbers."""
    import onnx
    import onnxruntime
    import torch

    from augkd_edge import __version__

    try:
        import onnxscript

        onnxscript_version: str | None = onnxscript.__version__
    except ImportError:
        onnxscript_version = None
    try:
        import tensorrt

        trt_version: str | None = tensorrt.__version__
    except ImportError:
        trt_version = None
    return {"augkd_edge": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxscript": onnxscript_version, "onnxruntime": onnxruntime.__version__,
            "tensorrt": trt_version}


def _file_entry(path: Path, precision: str) -> dict[str, Any]:
    from augkd_edge.export.tensorrt import sha256_file

    return {"sha256": sha256_file(path), "bytes": path.stat().st_size, "precision": precision}


def _calibration_subset(images, limit: int, seed: int = 0):
    """A seeded subset: calibration cost grows with images, its quality saturates after a few hundred."""
    import numpy as np

    if limit <= 0 or len(images) <= limit:
        return images
    index = np.sort(np.random.default_rng(seed).choice(len(images), size=limit, replace=False))
    return images[index]


@dataclasses.dataclass
class _Job:
    """Everything the steps share, so each step stays a short function."""

    out: Path
    model: Any  # wrapped nn.Module (normalisation included)
    meta: Any  # ModelMeta
    model_path: Path
    record: dict
    test_x: Any
    test_y: Any
    batch: int | None
    threads: int | None


def _export_fp32(job: _Job, opset: int, split: str, atol: float, rtol: float, min_agreement: float) -> Path:
    from augkd_edge.export.onnx import export_onnx
    from augkd_edge.export.parity import compare_runners
    from augkd_edge.export.runtimes import OrtRunner, TorchRunner

    info = export_onnx(job.model, job.out / "student.onnx", job.meta.input_size, opset=opset, batch=job.batch)
    click.echo(f"wrote {info.path} (opset {info.opset}, {info.exporter} exporter, input {info.input_shape})")
    with TorchRunner(job.model) as ref, OrtRunner(info.path, threads=job.threads) as cand:
        parity = compare_runners(ref, cand, job.test_x, atol=atol, rtol=rtol, min_agreement=min_agreement,
                                 fixed_batch=job.batch)
    click.echo(f"{split} split: {parity.summary()}")
    job.record.update({
        "opset": info.opset,
        "exporter": info.exporter,
        "batch": "dynamic" if job.batch is None else job.batch,
        "input": {"name": info.input_name, "shape": info.input_shape, "dtype": "float32", "layout": "NCHW",
                  "range": [0.0, 1.0], "color": "RGB"},
        "output": {"name": info.output_name, "shape": info.output_shape, "dtype": "float32", "meaning": "logits"},
        "operators": info.operators,
        "parity": {"split": split, **parity.to_dict()},
    })
    job.record["files"]["student.onnx"] = _file_entry(info.path, "fp32")
    if not parity.passed:
        raise ExportCheckFailed(
            f"{info.path}: ONNX Runtime disagrees with PyTorch beyond tolerance ({parity.summary()}); "
            f"do not deploy it. Figures are in {job.out / 'export.json'}."
        )
    return info.path


def _export_int8(job: _Job, fp32_path: Path, calibration: str, calibration_size: int, max_drop: float,
                 force: bool) -> Path | None:
    from augkd_edge.export.latency import batched_logits, top1_accuracy
    from augkd_edge.export.quantize import quantize_int8
    from augkd_edge.export.runtimes import OrtRunner
    from augkd_edge.rundir import split_arrays

    train_x, _ = split_arrays(job.meta, "train")  # calibration never sees the test split
    calib = _calibration_subset(train_x, calibration_size)
    click.echo(f"INT8: calibrating ({calibration}) on {len(calib)} training images of the student domain ...")
    int8_path = quantize_int8(fp32_path, job.out / "student.int8.onnx", calib, method=calibration,
                              fixed_batch=job.batch)
    with OrtRunner(fp32_path, threads=job.threads) as fp32, OrtRunner(int8_path, threads=job.threads) as int8:
        acc32 = top1_accuracy(batched_logits(fp32.infer, job.test_x, fixed_batch=job.batch), job.test_y)
        acc8 = top1_accuracy(batched_logits(int8.infer, job.test_x, fixed_batch=job.batch), job.test_y)
    drop = 100.0 * (acc32 - acc8)
    accepted = drop <= max_drop
    job.record["int8"] = {
        "format": "QDQ (ONNX Runtime static quantization; TensorRT explicit quantization)",
        "activations": "int8 symmetric per-tensor", "weights": "int8 symmetric per-channel", "bias": "float",
        "calibration": calibration, "calibration_split": "train", "calibration_images": int(len(calib)),
        "test_images": int(len(job.test_y)), "fp32_top1": acc32, "int8_top1": acc8,
        "drop_points": drop, "max_drop_points": max_drop, "accepted": accepted, "forced": bool(force and not accepted),
    }
    click.echo(f"INT8: test top-1 FP32 {100 * acc32:.2f}% -> INT8 {100 * acc8:.2f}% "
               f"(drop {drop:.2f} points, limit {max_drop:g})")
    if not accepted and not force:
        int8_path.unlink()
        raise ExportCheckFailed(
            f"{job.model_path}: INT8 loses {drop:.2f} top-1 points on the test split (limit --max-drop "
            f"{max_drop:g}); the QDQ model was not kept. Try --calibration entropy or percentile, or --force."
        )
    if not accepted:
        click.echo("INT8: drop over the limit, kept because of --force", err=True)
    job.record["files"]["student.int8.onnx"] = _file_entry(int8_path, "int8")
    return int8_path


def _export_trt(job: _Job, onnx_path: Path, settings, min_agreement: float) -> None:
    from augkd_edge.export import tensorrt as trt_export
    from augkd_edge.export.trt_ops import check_tensorrt_support

    support = check_tensorrt_support(onnx_path)
    section: dict[str, Any] = {"settings": settings.to_dict(), "onnx": onnx_path.name, "op_support": support.to_dict()}
    job.record["tensorrt"] = section
    if not support.ok:
        listed = "; ".join(str(o) for o in support.offences[:10])
        raise ExportCheckFailed(f"{onnx_path}: TensorRT {support.tensorrt_version}'s ONNX parser would reject: {listed}")
    click.echo(f"TensorRT: every node of {onnx_path.name} is supported by TensorRT {support.tensorrt_version}'s parser")
    engine_name = f"student.{settings.precision}.engine"
    extra = {"onnx_sha256": job.record["files"][onnx_path.name]["sha256"]}
    script = trt_export.write_build_script(job.out, onnx_path.name, engine_name, settings, extra_metadata=extra)
    section["build_script"] = script.name
    section["trtexec"] = " ".join(trt_export.trtexec_command(onnx_path.name, engine_name, settings))
    job.record["files"][script.name] = _file_entry(script, settings.precision)
    if not trt_export.tensorrt_available():
        section["available"] = False
        click.echo(
            "TensorRT: not importable here, so no engine was built. The folder is the deployable bundle: "
            f"copy {job.out} to the target (e.g. a Jetson) and run ./build_engine.sh there; it runs:\n  "
            + section["trtexec"]
        )
        return
    section["available"] = True
    engine_path = job.out / engine_name
    section["engine"] = trt_export.build_engine(onnx_path, engine_path, settings)
    job.record["files"][engine_name] = _file_entry(engine_path, settings.precision)
    _trt_parity(job, onnx_path, engine_path, min_agreement)


def _trt_parity(job: _Job, onnx_path: Path, engine_path: Path, min_agreement: float) -> None:
    """Engine vs ONNX Runtime on the test split, by decisions: TF32/FP16 kernels move logits legitimately."""
    from augkd_edge.export.parity import compare_runners
    from augkd_edge.export.runtimes import OrtRunner, TrtRunner

    with OrtRunner(onnx_path, threads=job.threads) as ref, TrtRunner(engine_path) as cand:
        parity = compare_runners(ref, cand, job.test_x, atol=float("inf"), min_agreement=min_agreement,
                                 fixed_batch=job.batch, batch_size=32)
    job.record["tensorrt"]["parity"] = parity.to_dict()
    click.echo(f"TensorRT: {parity.summary()}")
    if not parity.passed:
        raise ExportCheckFailed(f"{engine_path}: TensorRT disagrees with ONNX Runtime: {parity.summary()}")


@click.command("export")
@click.argument("model", metavar="RUN_DIR_OR_CHECKPOINT", type=click.Path(path_type=Path))
@click.option("--onnx", "want_onnx", is_flag=True,
              help="Export the FP32 ONNX model and check it against PyTorch (always done when --int8 or --trt "
                   "is given, since they start from it).")
@click.option("--opset", type=click.IntRange(min=13), default=18, show_default=True,
              help="ONNX opset. >= 18 uses the torch.export-based exporter, 13-17 the TorchScript one; "
                   "TensorRT 10 parses 9-24.")
@click.option("--batch", "batch_text", default="dynamic", show_default=True,
              help="Batch dimension of the graph: 'dynamic' or a fixed size N (some accelerators need static shapes).")
@click.option("--input-size", type=click.IntRange(min=8), default=None,
              help="Square input resolution of the exported graph [default: the size the model was trained at]. "
                   "The check images are preprocessed at this size too.")
@click.option("--split", type=click.Choice(["test", "eval"]), default="test", show_default=True,
              help="Student-domain split used for parity and INT8 accuracy (a teacher run has no test split: use eval).")
@click.option("--atol", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              help="Absolute part of the parity tolerance: |ONNX Runtime - PyTorch| over all logits of the split "
                   "may reach atol + rtol x the largest |logit|.")
@click.option("--rtol", type=click.FloatRange(min=0), default=1e-5, show_default=True,
              help="Relative part of the parity tolerance, a fraction of the largest |logit| (float32 rounding "
                   "grows with the logits' range).")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Smallest allowed fraction of images whose top-1 class matches PyTorch's (1.0 = all).")
@click.option("--int8", is_flag=True,
              help="Also write student.int8.onnx: static INT8 quantization (QDQ, symmetric, per-channel weights) "
                   "calibrated on the student domain's training split; with --trt the engine is built from it.")
@click.option("--calibration", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="How activation ranges are chosen from the calibration images.")
@click.option("--calibration-size", type=click.IntRange(min=0), default=1024, show_default=True,
              help="At most this many training images (a seeded subset) for calibration; 0 = all.")
@click.option("--max-drop", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Refuse the INT8 model (exit 3, file removed) when its test top-1 is more than this many "
                   "percentage points below FP32's.")
@click.option("--force", is_flag=True, help="Keep the INT8 model even when its drop exceeds --max-drop.")
@click.option("--trt", is_flag=True,
              help="TensorRT: check every node against TensorRT 10's ONNX parser, write build_engine.sh (the exact "
                   "trtexec command, for building on the target), and build + check the engine here when "
                   "TensorRT and a GPU are available.")
@click.option("--fp16", is_flag=True, help="With --trt: allow FP16 kernels (for unquantized layers too with --int8).")
@click.option("--workspace", "workspace_mb", type=click.IntRange(min=1), default=1024, show_default=True,
              help="With --trt: builder workspace memory pool in MiB (keep it small on Jetson).")
@click.option("--min-batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --trt and a dynamic batch: smallest batch of the optimisation profile.")
@click.option("--opt-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="With --trt: batch TensorRT tunes its kernels for.")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="With --trt: largest batch the engine accepts.")
@click.option("--trt-min-agreement", type=click.FloatRange(0, 1), default=0.99, show_default=True,
              help="With a built engine: smallest fraction of test images whose top-1 matches ONNX Runtime's "
                   "(logits differ legitimately under TF32/FP16).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="ONNX Runtime CPU threads for the checks [default: ONNX Runtime's choice].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder: student.onnx, student.int8.onnx, build_engine.sh / *.engine, export.json.")
def command(model: Path, want_onnx: bool, opset: int, batch_text: str, input_size: int | None, split: str,
            atol: float, rtol: float, min_agreement: float, int8: bool, calibration: str, calibration_size: int,
            max_drop: float, force: bool, trt: bool, fp16: bool, workspace_mb: int, min_batch: int,
            opt_batch: int, max_batch: int, trt_min_agreement: float, threads: int | None, out_dir: Path) -> None:
    """Export a trained student (a run folder or its student.pt) for deployment.

    The graph takes float32 NCHW RGB images in [0, 1] (input 'image') and returns
    logits (output 'logits'): the training normalisation is baked into the graph.
    Exit codes: 0 done, 2 user mistake, 3 a check failed (parity, INT8 drop, TensorRT support).
    """
    from augkd_edge.export.onnx import with_normalisation
    from augkd_edge.export.tensorrt import EngineSettings, sha256_file, write_json_atomic
    from augkd_edge.rundir import load_student, resolve_model_path, split_arrays

    from augkd_edge.checkpoint import check_writable_dir

    if not (want_onnx or int8 or trt):
        raise UserError("nothing to export: give --onnx, --int8 and/or --trt.")
    check_writable_dir(out_dir, "--out")
    if fp16 and not trt:
        raise UserError("--fp16 applies to the TensorRT engine: add --trt.")
    batch = _batch_option(batch_text)
    settings = None
    if trt:  # validate the profile before minutes of export work
        settings = EngineSettings("image", input_size or 8, fp16=fp16, int8=int8, workspace_mb=workspace_mb,
                                  min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                                  static_batch=batch)
    model_path = resolve_model_path(model)
    student, meta = load_student(model_path)
    if input_size is not None and input_size != meta.input_size:
        click.echo(f"note: exporting at {input_size}px; the model was trained at {meta.input_size}px", err=True)
        meta = dataclasses.replace(meta, input_size=input_size)
    test_x, test_y = split_arrays(meta, split)
    if len(test_y) == 0:
        raise UserError(f"{model_path}: the recorded {split} split is empty; nothing to check the export on.")
    out_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "format": "augkd-edge/export", "version": 1,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"model_file": str(model_path), "sha256": sha256_file(model_path), "arch": meta.arch,
                   "num_classes": meta.num_classes, "data": meta.extra.get("data")},
        "normalisation": {"in_graph": True, "mean": list(meta.mean), "std": list(meta.std),
                          "note": "the graph computes (image - mean) / std itself: feed RGB in [0, 1]"},
        "class_names": list(meta.class_names),
        "files": {},
        "tools": tool_versions(),
    }
    job = _Job(out=out_dir, model=with_normalisation(student, meta.mean, meta.std), meta=meta,
               model_path=model_path, record=record, test_x=test_x, test_y=test_y, batch=batch, threads=threads)
    try:
        fp32_path = _export_fp32(job, opset, split, atol, rtol, min_agreement)
        int8_path = _export_int8(job, fp32_path, calibration, calibration_size, max_drop, force) if int8 else None
        if settings is not None:
            settings = dataclasses.replace(settings, input_size=meta.input_size)
            _export_trt(job, int8_path or fp32_path, settings, trt_min_agreement)
    finally:
        write_json_atomic(record, out_dir / "export.json")
    click.echo(f"wrote {out_dir / 'export.json'}")
