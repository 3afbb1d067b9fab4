"""INT8 post-training quantization, in the form the target runs fastest (``INT8_FORMATS``).

Two targets, two formats (measured: ``benchmarks/int8_formats.py``, results in
``benchmarks/results/int8-formats-cpu-2core/``):

- ``tensorrt``: the QDQ form TensorRT 10 builds from (below). ONNX Runtime's
  CPU kernels run this form 4-8x *slower* than FP32 (symmetric signed
  activations have no fast path there).
- ``ort-cpu``: QDQ with unsigned, asymmetric activations, signed per-channel
  weights and ``reduce_range`` (7-bit weights, no overflow in the U8S8 dot
  products of CPUs without VNNI): the form ORT's CPU execution provider fuses
  into its integer kernels.

The TensorRT form:

ONNX Runtime's static quantizer writes ``QuantizeLinear``/``DequantizeLinear``
pairs around the float graph (QDQ format), which is TensorRT's *explicit
quantization* input: no TensorRT calibrator is needed on the board, and the same
file runs in ONNX Runtime here so its accuracy can be measured before anyone
flashes a device. Settings follow TensorRT's rules, not ORT's defaults:

- signed INT8, **symmetric** activations and weights (TensorRT requires zero
  points of 0), per-channel weights (the accuracy-critical choice for
  depthwise-separable students such as MobileNetV3);
- biases stay float (``QuantizeBias=False``): TensorRT's ``DequantizeLinear``
  takes INT8/FP8/INT4 inputs, not the INT32 biases ORT writes by default.

Calibration images are the student domain's *training* split: calibrating on
the test split would leak the very images the accuracy gate is measured on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import tempfile
from pathlib import Path

import numpy as np

from augkd_edge.errors import UserError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIBRATION = "minmax"
#: at most this many training images calibrate (a seeded subset); see docs/decisions.md#export-and-benchmarks
DEFAULT_CALIBRATION_SIZE = 1024
#: the INT8 gate: refuse a QDQ model whose test top-1 is more than this many points below FP32's
DEFAULT_MAX_DROP_POINTS = 1.0


def calibration_subset(images: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """A seeded subset of at most ``limit`` images (0 = all): calibration cost grows with images,
    its quality saturates after a few hundred."""
    if limit <= 0 or len(images) <= limit:
        return images
    index = np.sort(np.random.default_rng(seed).choice(len(images), size=limit, replace=False))
    return images[index]


def int8_gate(fp32_top1: float, int8_top1: float, max_drop_points: float, force: bool) -> dict[str, object]:
    """The accept/reject decision on a QDQ model: its top-1 drop in percentage points against FP32.

    ``accepted`` when the drop is at most ``max_drop_points``; ``forced`` when it is
    not but the caller keeps the model anyway. These keys go into ``export.json``.
    """
    drop = 100.0 * (fp32_top1 - int8_top1)
    accepted = drop <= max_drop_points
    return {"fp32_top1": fp32_top1, "int8_top1": int8_top1, "drop_points": drop, "max_drop_points": max_drop_points,
            "accepted": accepted, "forced": bool(force and not accepted)}


@dataclasses.dataclass(frozen=True)
class Int8Format:
    """The quantizer settings for one runtime, and how export.json describes them."""

    activations: str  # onnxruntime.quantization.QuantType name
    symmetric_activations: bool
    reduce_range: bool
    description: dict[str, str]


INT8_FORMATS = {
    "tensorrt": Int8Format("QInt8", True, False, {
        "format": "QDQ (ONNX Runtime static quantization; TensorRT explicit quantization)",
        "activations": "int8 symmetric per-tensor", "weights": "int8 symmetric per-channel", "bias": "float"}),
    "ort-cpu": Int8Format("QUInt8", False, True, {
        "format": "QDQ (ONNX Runtime static quantization, for its CPU execution provider)",
        "activations": "uint8 asymmetric per-tensor", "weights": "int8 symmetric per-channel, reduce_range",
        "bias": "float"}),
}


class ImageCalibrationReader:
    """Feeds calibration batches to ONNX Runtime's calibrator (its CalibrationDataReader protocol).

    Every batch has the same size: the histogram calibrators (entropy,
    percentile) stack per-batch outputs and fail on a short last batch, and a
    fixed-batch graph accepts only its own batch size. The last batch is
    therefore completed with images from the start of the set (each image is
    still seen, a few twice; min/max and histograms barely move).
    """

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 32, fixed_batch: int | None = None):
        if images.ndim != 4 or images.dtype != np.float32:
            raise ValueError(f"calibration images must be float32 NCHW, got {images.dtype} {images.shape}")
        if len(images) == 0:
            raise UserError("no calibration images: the training split of the student domain is empty.")
        self.images = images
        self.input_name = input_name
        self.step = fixed_batch or min(batch_size, len(images))
        self._start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start >= len(self.images):
            return None
        index = np.arange(self._start, self._start + self.step) % len(self.images)
        self._start += self.step
        return {self.input_name: np.ascontiguousarray(self.images[index])}

    def rewind(self) -> None:
        self._start = 0

    def __len__(self) -> int:
        return -(-len(self.images) // self.step)


def _calibrate_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if name not in table:
        raise UserError(f"--calibration {name!r}: choose one of {', '.join(CALIBRATION_METHODS)}.")
    return table[name]


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration_images: np.ndarray,
    method: str = "minmax",
    input_name: str = "image",
    batch_size: int = 32,
    fixed_batch: int | None = None,
    percentile: float = 99.999,
    target: str = "tensorrt",
) -> Path:
    """Write the INT8 model of ``fp32_path`` for ``target`` (a key of ``INT8_FORMATS``) to ``out_path``.

    The float model is first run through ``quant_pre_process`` (shape inference
    and ORT's graph cleanup: BatchNorm folding, constant folding), which the
    quantizer needs to place Q/DQ pairs on fused Conv outputs rather than on
    every intermediate tensor.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if target not in INT8_FORMATS:
        raise UserError(f"--int8-for {target!r}: choose one of {', '.join(INT8_FORMATS)}.")
    fmt = INT8_FORMATS[target]
    calibrate_method = _calibrate_method(method)
    reader = ImageCalibrationReader(calibration_images, input_name, batch_size, fixed_batch)
    extra_options = {
        "ActivationSymmetric": fmt.symmetric_activations,
        "WeightSymmetric": True,
        "QuantizeBias": False,
    }
    if method == "percentile":
        extra_options["CalibPercentile"] = percentile
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".quantize-") as work:
        prepared = Path(work) / "prepared.onnx"
        quantized = Path(work) / "quantized.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
                quantize_static(
                    str(prepared),
                    str(quantized),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    reduce_range=fmt.reduce_range,
                    activation_type=getattr(QuantType, fmt.activations),
                    weight_type=QuantType.QInt8,
                    calibrate_method=calibrate_method,
                    extra_options=extra_options,
                )
        except UserError:
            raise
        except Exception as exc:  # ORT raises plain Exceptions / RuntimeErrors from C++
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{fp32_path}: INT8 quantization ({method} calibration) failed: {first}") from exc
        quantized.replace(out_path)  # same folder: an atomic rename
    return out_path
