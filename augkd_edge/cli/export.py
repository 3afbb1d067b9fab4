"""``augkd-edge export``: a trained student -> ONNX (+ INT8 for its runtime, + TensorRT engine or bundle).

Parsing and printing only: ``augkd_edge.deploy.export_student`` loads the model
file and its recorded splits, ``augkd_edge.export.api`` does every step and
check (ONNX Runtime vs PyTorch parity, the INT8 accuracy gate, TensorRT support
and parity) and documents ``export.json``.

Exit codes: 0 done; 2 a user mistake (bad path, corrupt or mismatched model
file, impossible option); 3 a check failed (parity beyond tolerance, INT8 drop
over --max-drop without --force, TensorRT-unsupported operators with --trt).
``export.json`` is written in every case where figures exist, so a failure can
be inspected.
"""

from __future__ import annotations

from pathlib import Path

import click

from augkd_edge.errors import UserError
from augkd_edge.export.api import ExportOptions
from augkd_edge.export.quantize import CALIBRATION_METHODS

_DEFAULT = ExportOptions()


def _batch_option(value: str) -> int | None:
    if value == "dynamic":
        return None
    try:
        return int(value)  # ExportOptions refuses a batch below 1
    except ValueError:
        raise UserError(f"--batch {value!r}: give 'dynamic' or a positive integer.") from None


@click.command("export")
@click.argument("model", metavar="RUN_DIR_OR_CHECKPOINT", type=click.Path(path_type=Path))
@click.option("--onnx", "want_onnx", is_flag=True,
              help="Export the FP32 ONNX model and check it against PyTorch (always done when --int8 or --trt "
                   "is given, since they start from it).")
@click.option("--opset", type=click.IntRange(min=13), default=_DEFAULT.opset, show_default=True,
              help="ONNX opset. >= 18 uses the torch.export-based exporter, 13-17 the TorchScript one; "
                   "TensorRT 10 parses 9-24.")
@click.option("--batch", "batch_text", default="dynamic", show_default=True,
              help="Batch dimension of the graph: 'dynamic' or a fixed size N (some accelerators need static shapes).")
@click.option("--input-size", type=click.IntRange(min=8), default=None,
              help="Square input resolution of the exported graph [default: the size the model was trained at]. "
                   "The check images are preprocessed at this size too.")
@click.option("--split", type=click.Choice(["test", "eval"]), default="test", show_default=True,
              help="Student-domain split used for parity and INT8 accuracy (a teacher run has no test split: use eval).")
@click.option("--atol", type=click.FloatRange(min=0), default=_DEFAULT.atol, show_default=True,
              help="Absolute part of the parity tolerance: |ONNX Runtime - PyTorch| over all logits of the split "
                   "may reach atol + rtol x the largest |logit|.")
@click.option("--rtol", type=click.FloatRange(min=0), default=_DEFAULT.rtol, show_default=True,
              help="Relative part of the parity tolerance, a fraction of the largest |logit| (float32 rounding "
                   "grows with the logits' range).")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=_DEFAULT.min_agreement, show_default=True,
              help="Smallest allowed fraction of images whose top-1 class matches PyTorch's (1.0 = all).")
@click.option("--int8", is_flag=True,
              help="Also write student.int8.onnx: static INT8 quantization (QDQ, per-channel weights) calibrated on "
                   "the student domain's training split, in the form --int8-for runs fastest; with --trt the engine "
                   "is built from it. Prints the speed-up over FP32 measured here.")
@click.option("--int8-for", "int8_for", type=click.Choice(["tensorrt", "ort-cpu"]), default=None,
              help="Runtime the INT8 model is for: tensorrt (symmetric int8 activations, TensorRT's explicit "
                   "quantization) or ort-cpu (uint8 asymmetric activations, ONNX Runtime's fast CPU form) "
                   "[default: tensorrt with --trt, else ort-cpu].")
@click.option("--calibration", type=click.Choice(CALIBRATION_METHODS), default=_DEFAULT.calibration,
              show_default=True, help="How activation ranges are chosen from the calibration images.")
@click.option("--calibration-size", type=click.IntRange(min=0), default=_DEFAULT.calibration_size, show_default=True,
              help="At most this many training images (a seeded subset) for calibration; 0 = all.")
@click.option("--max-drop", type=click.FloatRange(min=0), default=_DEFAULT.max_drop, show_default=True,
              help="Refuse the INT8 model (exit 3, file removed) when its test top-1 is more than this many "
                   "percentage points below FP32's.")
@click.option("--force", is_flag=True, help="Keep the INT8 model even when its drop exceeds --max-drop.")
@click.option("--trt", is_flag=True,
              help="TensorRT: check every node against TensorRT 10's ONNX parser, write build_engine.sh (the exact "
                   "trtexec command, for building on the target), and build + check the engine here when "
                   "TensorRT and a GPU are available.")
@click.option("--openvino", is_flag=True,
              help="OpenVINO IR from the checked ONNX: student.fp32.xml and student.fp16.xml (compressed weights), "
                   "each compared with PyTorch on the split (needs augkd-edge[openvino]).")
@click.option("--fp16", is_flag=True, help="With --trt: allow FP16 kernels (for unquantized layers too with --int8).")
@click.option("--workspace", "workspace_mb", type=click.IntRange(min=1), default=_DEFAULT.workspace_mb, show_default=True,
              help="With --trt: builder workspace memory pool in MiB (keep it small on Jetson).")
@click.option("--min-batch", type=click.IntRange(min=1), default=_DEFAULT.min_batch, show_default=True,
              help="With --trt and a dynamic batch: smallest batch of the optimisation profile.")
@click.option("--opt-batch", type=click.IntRange(min=1), default=_DEFAULT.opt_batch, show_default=True,
              help="With --trt: batch TensorRT tunes its kernels for.")
@click.option("--max-batch", type=click.IntRange(min=1), default=_DEFAULT.max_batch, show_default=True,
              help="With --trt: largest batch the engine accepts.")
@click.option("--trt-min-agreement", type=click.FloatRange(0, 1), default=_DEFAULT.trt_min_agreement, show_default=True,
              help="With a built engine: smallest fraction of test images whose top-1 matches ONNX Runtime's "
                   "(logits differ legitimately under TF32/FP16).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="ONNX Runtime CPU threads for the checks [default: ONNX Runtime's choice].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder: student.onnx, student.int8.onnx, build_engine.sh / *.engine, export.json.")
def command(model: Path, want_onnx: bool, opset: int, batch_text: str, input_size: int | None, split: str,
            atol: float, rtol: float, min_agreement: float, int8: bool, calibration: str, calibration_size: int,
            max_drop: float, force: bool, int8_for: str | None, trt: bool, openvino: bool, fp16: bool, workspace_mb: int,
            min_batch: int, opt_batch: int, max_batch: int, trt_min_agreement: float, threads: int | None, out_dir: Path) -> None:
    """Export a trained student (a run folder or its student.pt) for deployment.

    The graph takes float32 NCHW RGB images in [0, 1] (input 'image') and returns
    logits (output 'logits'): the training normalisation is baked into the graph.
    Exit codes: 0 done, 2 user mistake, 3 a check failed (parity, INT8 drop, TensorRT support, OpenVINO parity).
    """
    from augkd_edge.deploy import export_student

    export_student(model, out_dir, input_size=input_size, split=split, echo=click.echo, onnx=want_onnx,
                   opset=opset, batch=_batch_option(batch_text), atol=atol, rtol=rtol, min_agreement=min_agreement,
                   int8=int8, int8_for=int8_for, calibration=calibration, calibration_size=calibration_size, max_drop=max_drop,
                   force=force, trt=trt, openvino=openvino, fp16=fp16, workspace_mb=workspace_mb, min_batch=min_batch,
                   opt_batch=opt_batch, max_batch=max_batch, trt_min_agreement=trt_min_agreement, threads=threads)
