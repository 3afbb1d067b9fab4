"""A trained student (a torch module plus what it was trained on) -> ONNX (+ INT8 for its runtime, + TensorRT engine or bundle).

The steps of ``augkd-edge export``, each checked before anything is called done:
ONNX Runtime vs PyTorch parity, the INT8 accuracy gate, TensorRT's parser
support, and with TensorRT here the engine vs ONNX Runtime. Loading the model
file and its recorded splits is the caller's (``augkd_edge.deploy``): this
module takes an ``nn.Module`` and arrays, so ``export/`` stays a leaf library.

``export.json`` (``"format": "augkd-edge/export"``, ``"version": 2``; version 2 added ``openvino``):
``source`` (model file, its sha256, arch, classes, data spec); ``normalisation``
(``in_graph: true``, mean, std); ``class_names``; ``opset``, ``exporter``,
``batch`` ("dynamic" or N); ``input`` / ``output`` (name, shape, dtype);
``operators``; ``parity`` (split, images, max_abs_diff, max_rel_diff,
top1_agreement, atol, rtol, logit_scale = the largest |PyTorch logit|,
tolerance = atol + rtol * logit_scale, min_agreement, passed); ``int8``
(target: tensorrt or ort-cpu, format, activations, weights, bias; speed_here: ONNX Runtime CPU
median ms per call of FP32 and INT8 measured side by side, and their ratio; calibration method,
split and image count, fp32_top1, int8_top1, drop_points, max_drop_points,
accepted, forced); ``openvino`` (fp32 / fp16: the IR's xml name and its parity against PyTorch,
FP32 within the ONNX tolerances, FP16 by top-1 agreement; int8, with --int8: ``candidates`` qdq (the QDQ model
read by OpenVINO) and nncf, each with the gate's keys and its batch-1 ms here, ``chosen``, ``xml`` and the chosen
one's gate keys; see ``openvino_export.py``); ``tensorrt`` (settings incl. profile and precision,
op_support with the TensorRT version of the operator list and offending nodes,
build_script, trtexec, available, and with an engine: its metadata and
parity); ``files`` (name -> sha256, bytes, precision); ``tools`` (versions of
augkd_edge, python, torch, onnx, onnxscript, onnxruntime, tensorrt and openvino or null).
It is written in every case where figures exist, so a failed check can be inspected.
"""

from __future__ import annotations

import dataclasses
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from augkd_edge.errors import ExportCheckFailed, UserError  # noqa: F401  (ExportCheckFailed re-exported)
from augkd_edge.export.parity import DEFAULT_ATOL, DEFAULT_RTOL
from augkd_edge.export.quantize import (DEFAULT_CALIBRATION, DEFAULT_CALIBRATION_SIZE, DEFAULT_MAX_DROP_POINTS,
                                        calibration_subset, int8_gate)
from augkd_edge.export.tensorrt import EngineSettings, file_entry

if TYPE_CHECKING:
    from torch import nn

#: the engine is compared with ONNX Runtime by decisions: TF32/FP16 kernels move logits legitimately
DEFAULT_TRT_MIN_AGREEMENT = 0.99
#: batch of the engine-vs-ONNX Runtime parity run (a dynamic engine's profile holds it by default)
TRT_PARITY_BATCH = 32

Echo = Callable[..., None]  # click.echo's shape: echo(message, err=False)


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """Every choice of an export; the defaults are the CLI's (docs/decisions.md#export-and-benchmarks)."""

    onnx: bool = True
    opset: int = 18
    batch: int | None = None  # None: a dynamic batch dimension
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    min_agreement: float = 1.0
    int8: bool = False
    # the runtime the INT8 model is for (quantize.INT8_FORMATS); None: tensorrt with trt, else ort-cpu
    int8_for: str | None = None
    calibration: str = DEFAULT_CALIBRATION
    calibration_size: int = DEFAULT_CALIBRATION_SIZE
    max_drop: float = DEFAULT_MAX_DROP_POINTS
    force: bool = False
    trt: bool = False
    # the TensorRT builder's choices: defaults are EngineSettings'
    fp16: bool = EngineSettings.fp16
    workspace_mb: int = EngineSettings.workspace_mb
    min_batch: int = EngineSettings.min_batch
    opt_batch: int = EngineSettings.opt_batch
    max_batch: int = EngineSettings.max_batch
    trt_min_agreement: float = DEFAULT_TRT_MIN_AGREEMENT
    threads: int | None = None
    openvino: bool = False  # also OpenVINO IR, FP32 and FP16 weights, from the checked ONNX

    def __post_init__(self) -> None:
        if not (self.onnx or self.int8 or self.trt or self.openvino):
            raise UserError("nothing to export: give --onnx, --int8, --trt and/or --openvino.")
        if self.fp16 and not self.trt:
            raise UserError("--fp16 applies to the TensorRT engine: add --trt.")
        if self.int8_for and not self.int8:
            raise UserError(f"--int8-for {self.int8_for} applies to the INT8 model: add --int8.")
        if self.int8_for == "ort-cpu" and self.trt:
            raise UserError("--int8-for ort-cpu with --trt: TensorRT builds only from the symmetric form; "
                            "drop --int8-for (or give --int8-for tensorrt), or export for ONNX Runtime without --trt.")
        if self.batch is not None and self.batch < 1:
            raise UserError(f"--batch {self.batch}: a fixed batch must be >= 1.")
        self.engine_settings(input_size=8)  # a bad batch profile fails before minutes of export work

    @property
    def int8_target(self) -> str:
        """The runtime the INT8 model is quantized for: the engine's with --trt, else ONNX Runtime on CPU."""
        return self.int8_for or ("tensorrt" if self.trt else "ort-cpu")

    def engine_settings(self, input_size: int) -> EngineSettings | None:
        """The TensorRT builder settings, validated (``None`` without ``trt``)."""
        if not self.trt:
            return None
        return EngineSettings("image", input_size, fp16=self.fp16, int8=self.int8, workspace_mb=self.workspace_mb,
                              min_batch=self.min_batch, opt_batch=self.opt_batch, max_batch=self.max_batch,
                              static_batch=self.batch)


@dataclasses.dataclass
class StudentToExport:
    """What the export needs from a trained student, already loaded.

    ``model`` takes normalised images (the training normalisation ``mean``/``std``
    is baked into the graph here); ``check_images``/``check_labels`` are the split
    the checks run on (``split`` names it); ``calibration_images`` returns the
    training split, called only for INT8 (calibration never sees the check split);
    ``source`` goes into ``export.json`` as is.
    """

    model: "nn.Module"
    input_size: int
    mean: Sequence[float]
    std: Sequence[float]
    class_names: Sequence[str]
    check_images: np.ndarray
    check_labels: np.ndarray
    split: str = "test"
    calibration_images: Callable[[], np.ndarray] | None = None
    source: dict[str, Any] = dataclasses.field(default_factory=dict)


def tool_versions(package_version: str | None) -> dict[str, str | None]:
    """Versions that change exported graphs or their numbers."""
    import onnx
    import onnxruntime
    import torch

    def optional(module: str) -> str | None:
        try:
            return __import__(module).__version__
        except ImportError:
            return None

    return {"augkd_edge": package_version, "python": platform.python_version(), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxscript": optional("onnxscript"), "onnxruntime": onnxruntime.__version__,
            "tensorrt": optional("tensorrt"), "openvino": optional("openvino")}


def silent(message: str, err: bool = False) -> None:
    """The default ``echo``: a library call prints nothing; ``export.json`` holds every figure."""


@dataclasses.dataclass
class _Job:
    """Everything the steps share, so each step stays a short function."""

    out: Path
    model: Any  # the wrapped nn.Module (normalisation included)
    student: StudentToExport
    options: ExportOptions
    record: dict
    echo: Echo


def export_student_model(student: StudentToExport, out_dir: str | Path, options: ExportOptions | None = None,
                         echo: Echo = silent, package_version: str | None = None) -> dict[str, Any]:
    """Export ``student`` into ``out_dir`` and return the ``export.json`` record.

    Raises :class:`ExportCheckFailed` (exit code 3 in the CLI) when parity, the INT8
    gate (without ``force``) or TensorRT support fails; ``export.json`` is written anyway.
    """
    from augkd_edge.export.onnx import with_normalisation
    from augkd_edge.export.tensorrt import write_json_atomic

    options = options or ExportOptions()
    settings = options.engine_settings(student.input_size)
    if len(student.check_labels) == 0:
        raise UserError(f"{student.source.get('model_file', 'the model')}: the recorded {student.split} split is "
                        f"empty; nothing to check the export on.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = _record_head(student, package_version)
    job = _Job(out=out, model=with_normalisation(student.model, student.mean, student.std), student=student,
               options=options, record=record, echo=echo)
    try:
        fp32_path = _export_fp32(job)
        int8_path = _export_int8(job, fp32_path) if options.int8 else None
        if options.openvino:
            from augkd_edge.export.openvino_export import export_ir

            export_ir(job, fp32_path, int8_path)
        if settings is not None:
            _export_trt(job, int8_path or fp32_path, settings)
    finally:
        write_json_atomic(record, out / "export.json")
    echo(f"wrote {out / 'export.json'}")
    return record


def _record_head(student: StudentToExport, package_version: str | None) -> dict[str, Any]:
    return {
        "format": "augkd-edge/export", "version": 2,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": student.source,
        "normalisation": {"in_graph": True, "mean": list(student.mean), "std": list(student.std),
                          "note": "the graph computes (image - mean) / std itself: feed RGB in [0, 1]"},
        "class_names": list(student.class_names),
        "files": {},
        "tools": tool_versions(package_version),
    }


def _export_fp32(job: _Job) -> Path:
    from augkd_edge.export.onnx import export_onnx
    from augkd_edge.export.parity import compare_runners
    from augkd_edge.export.runtimes import OrtRunner, TorchRunner

    opt, student = job.options, job.student
    info = export_onnx(job.model, job.out / "student.onnx", student.input_size, opset=opt.opset, batch=opt.batch)
    job.echo(f"wrote {info.path} (opset {info.opset}, {info.exporter} exporter, input {info.input_shape})")
    with TorchRunner(job.model) as ref, OrtRunner(info.path, threads=opt.threads) as cand:
        parity = compare_runners(ref, cand, student.check_images, atol=opt.atol, rtol=opt.rtol,
                                 min_agreement=opt.min_agreement, fixed_batch=opt.batch)
    job.echo(f"{student.split} split: {parity.summary()}")
    job.record.update({
        "opset": info.opset,
        "exporter": info.exporter,
        "batch": "dynamic" if opt.batch is None else opt.batch,
        "input": {"name": info.input_name, "shape": info.input_shape, "dtype": "float32", "layout": "NCHW",
                  "range": [0.0, 1.0], "color": "RGB"},
        "output": {"name": info.output_name, "shape": info.output_shape, "dtype": "float32", "meaning": "logits"},
        "operators": info.operators,
        "parity": {"split": student.split, **parity.to_dict()},
    })
    job.record["files"]["student.onnx"] = file_entry(info.path, "fp32")
    if not parity.passed:
        raise ExportCheckFailed(
            f"{info.path}: ONNX Runtime disagrees with PyTorch beyond tolerance ({parity.summary()}); "
            f"do not deploy it. Figures are in {job.out / 'export.json'}."
        )
    return info.path


def _export_int8(job: _Job, fp32_path: Path) -> Path:
    from augkd_edge.export.latency import batched_logits, top1_accuracy
    from augkd_edge.export.quantize import INT8_FORMATS, quantize_int8
    from augkd_edge.export.runtimes import OrtRunner
    from augkd_edge.export.speedup import int8_speedup

    opt, student = job.options, job.student
    if student.calibration_images is None:
        raise UserError("INT8 needs calibration images (the training split of the student domain).")
    calib = calibration_subset(student.calibration_images(), opt.calibration_size)
    job.echo(f"INT8: calibrating ({opt.calibration}) on {len(calib)} training images of the student domain ...")
    int8_path = quantize_int8(fp32_path, job.out / "student.int8.onnx", calib, method=opt.calibration,
                              fixed_batch=opt.batch, target=opt.int8_target)
    x, y = student.check_images, student.check_labels
    with OrtRunner(fp32_path, threads=opt.threads) as fp32, OrtRunner(int8_path, threads=opt.threads) as int8:
        acc32 = top1_accuracy(batched_logits(fp32.infer, x, fixed_batch=opt.batch), y)
        acc8 = top1_accuracy(batched_logits(int8.infer, x, fixed_batch=opt.batch), y)
        gate = int8_gate(acc32, acc8, opt.max_drop, opt.force)
        # timed on the same sessions, and only for a model that is kept
        speed = (int8_speedup(fp32, int8, x, batch=opt.batch or 1, threads=opt.threads)
                 if gate["accepted"] or opt.force else None)
    job.record["int8"] = {
        "target": opt.int8_target, **INT8_FORMATS[opt.int8_target].description,
        "calibration": opt.calibration, "calibration_split": "train", "calibration_images": int(len(calib)),
        "test_images": int(len(y)), **gate,
    }
    job.echo(f"INT8: test top-1 FP32 {100 * acc32:.2f}% -> INT8 {100 * acc8:.2f}% "
             f"(drop {gate['drop_points']:.2f} points, limit {opt.max_drop:g})")
    if not gate["accepted"] and not opt.force:
        int8_path.unlink()
        raise ExportCheckFailed(
            f"{student.source.get('model_file', 'the model')}: INT8 loses {gate['drop_points']:.2f} top-1 points on "
            f"the test split (limit --max-drop {opt.max_drop:g}); the QDQ model was not kept. Try --calibration "
            f"entropy or percentile, or --force."
        )
    if not gate["accepted"]:
        job.echo("INT8: drop over the limit, kept because of --force", err=True)
    job.record["files"]["student.int8.onnx"] = file_entry(int8_path, "int8")
    _int8_speed_here(job, speed)
    return int8_path


def _int8_speed_here(job: _Job, speed: dict[str, Any]) -> None:
    """Record and print INT8's speed-up over FP32 on this machine's ONNX Runtime CPU provider; warn if none."""
    opt = job.options
    job.record["int8"]["speed_here"] = speed
    job.echo(f"INT8 on this machine (ONNX Runtime CPU, batch {speed['batch']}): {speed['int8_median_ms']:.3f} ms "
             f"vs FP32 {speed['fp32_median_ms']:.3f} ms per call, {speed['speedup']:.2f}x")
    if speed["speedup"] < 1.0:
        hint = ("the TensorRT form is meant for the engine built on the target (--trt), not for ONNX Runtime here"
                if opt.int8_target == "tensorrt" else
                "for a model this small the FP32 kernels are as fast; ship FP32 here, INT8 saves only file size")
        job.echo(f"warning: INT8 is not faster than FP32 on this machine ({speed['speedup']:.2f}x): {hint}.",
                 err=True)


def _export_trt(job: _Job, onnx_path: Path, settings: EngineSettings) -> None:
    from augkd_edge.export import tensorrt as trt_export
    from augkd_edge.export.trt_ops import check_tensorrt_support

    support = check_tensorrt_support(onnx_path)
    section: dict[str, Any] = {"settings": settings.to_dict(), "onnx": onnx_path.name, "op_support": support.to_dict()}
    job.record["tensorrt"] = section
    if not support.ok:
        listed = "; ".join(str(o) for o in support.offences[:10])
        raise ExportCheckFailed(f"{onnx_path}: TensorRT {support.tensorrt_version}'s ONNX parser would reject: {listed}")
    job.echo(f"TensorRT: every node of {onnx_path.name} is supported by TensorRT {support.tensorrt_version}'s parser")
    engine_name = f"student.{settings.precision}.engine"
    extra = {"onnx_sha256": job.record["files"][onnx_path.name]["sha256"]}
    script = trt_export.write_build_script(job.out, onnx_path.name, engine_name, settings, extra_metadata=extra)
    section["build_script"] = script.name
    section["trtexec"] = " ".join(trt_export.trtexec_command(onnx_path.name, engine_name, settings))
    job.record["files"][script.name] = file_entry(script, settings.precision)
    if not trt_export.tensorrt_available():
        section["available"] = False
        job.echo(
            "TensorRT: not importable here, so no engine was built. The folder is the deployable bundle: "
            f"copy {job.out} to the target (e.g. a Jetson) and run ./build_engine.sh there; it runs:\n  "
            + section["trtexec"]
        )
        return
    section["available"] = True
    engine_path = job.out / engine_name
    section["engine"] = trt_export.build_engine(onnx_path, engine_path, settings)
    job.record["files"][engine_name] = file_entry(engine_path, settings.precision)
    _trt_parity(job, onnx_path, engine_path)


def _trt_parity(job: _Job, onnx_path: Path, engine_path: Path) -> None:
    """Engine vs ONNX Runtime on the check split, by decisions: TF32/FP16 kernels move logits legitimately."""
    from augkd_edge.export.parity import compare_runners
    from augkd_edge.export.runtimes import OrtRunner, TrtRunner

    opt = job.options
    with OrtRunner(onnx_path, threads=opt.threads) as ref, TrtRunner(engine_path) as cand:
        parity = compare_runners(ref, cand, job.student.check_images, atol=float("inf"),
                                 min_agreement=opt.trt_min_agreement, fixed_batch=opt.batch,
                                 batch_size=TRT_PARITY_BATCH)
    job.record["tensorrt"]["parity"] = parity.to_dict()
    job.echo(f"TensorRT: {parity.summary()}")
    if not parity.passed:
        raise ExportCheckFailed(f"{engine_path}: TensorRT disagrees with ONNX Runtime: {parity.summary()}")
