"""OpenVINO: the exported ONNX converted to OpenVINO IR, and a runner for IR files (issue 22, first part).

Why a second runtime: many edge boxes are Intel machines whose standard runtime is OpenVINO, and its wheel runs
on the CPU here, so unlike TensorRT it can be measured on every machine. The IR is converted from the ONNX file
``export --onnx`` already checked (normalisation inside, NCHW [0, 1] RGB input), not from the PyTorch module, so
the two deployable files are the same graph. ``fp16`` stores compressed FP16 weights (OpenVINO's
``compress_to_fp16``); the CPU plugin still computes in FP32 or BF16 as it sees fit, so FP16 here is a file-size
choice, and its parity is checked like FP32's. An INT8 IR is read from export's QDQ ONNX: OpenVINO turns
each QuantizeLinear/DequantizeLinear pair into a FakeQuantize node and runs the layers between in INT8.

No torch import here: the runner is what a deployment box without PyTorch runs. OpenVINO is the optional extra
``augkd-edge[openvino]``; without it every entry point says which extra to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from augkd_edge.errors import UserError
from augkd_edge.export.runner_base import _RunnerBase, check_images

HINTS = ("LATENCY", "THROUGHPUT")
IR_PRECISIONS = ("fp32", "fp16")


def import_openvino() -> Any:
    """The ``openvino`` module, or a UserError that names the extra to install."""
    try:
        import openvino
    except ImportError as exc:
        raise UserError(
            "OpenVINO is not installed: `pip install 'augkd-edge[openvino]'` (or `pip install openvino`)."
        ) from exc
    return openvino


def convert_to_ir(onnx_path: str | Path, xml_path: str | Path, precision: str = "fp32") -> Path:
    """Convert ``onnx_path`` to ``xml_path`` (+ its ``.bin``); ``precision`` ``fp16`` compresses the weights."""
    if precision not in IR_PRECISIONS:
        raise UserError(f"OpenVINO IR precision {precision!r}: use one of {', '.join(IR_PRECISIONS)}.")
    ov = import_openvino()
    onnx_path, xml_path = Path(onnx_path), Path(xml_path)
    if not onnx_path.is_file():
        raise UserError(f"{onnx_path}: ONNX file not found; export one with `augkd-edge export --onnx`.")
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:  # OpenVINO's frontends raise their own error types
        raise UserError(f"{onnx_path}: OpenVINO cannot convert this model: {str(exc).splitlines()[0]}") from exc
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml_path), compress_to_fp16=(precision == "fp16"))
    return xml_path


def ir_precision(xml_path: str | Path) -> str:
    """int8 when the IR holds FakeQuantize nodes (a QDQ ONNX read by OpenVINO), fp16 when it stores half-precision
    weights (compressed constants), else fp32; read from the XML."""
    text = Path(xml_path).read_text(errors="replace")
    if 'type="FakeQuantize"' in text:
        return "int8"
    return "fp16" if 'element_type="f16"' in text else "fp32"


def ir_input_size(xml_path: str | Path) -> int | None:
    """The IR input's width when static (a dynamic batch is fine), else None."""
    ov = import_openvino()
    shape = ov.Core().read_model(str(xml_path)).input(0).get_partial_shape()
    last = shape[shape.rank.get_length() - 1]
    return int(last.get_length()) if last.is_static else None


def _device_name(core: Any, device: str) -> str:
    """``cpu`` -> ``CPU``; OpenVINO's own names (``CPU``, ``GPU``, ``NPU``, ``AUTO``, ``GPU.1``) as given, refused
    with the list of what this machine has when absent."""
    name = "CPU" if device == "cpu" else device
    available = list(core.available_devices)
    base = name.split(".")[0]
    if name == "AUTO" or name in available or (base != name and base in {d.split(".")[0] for d in available}):
        return name
    raise UserError(
        f"OpenVINO device {device!r} is not present here (available: {', '.join(available) or 'none'}, or AUTO); "
        "use one of them, e.g. --ov-device CPU."
    )


class OpenVinoRunner(_RunnerBase):
    """An OpenVINO IR (``.xml`` + ``.bin``), compiled for one device.

    ``threads`` sets the CPU plugin's inference threads (``INFERENCE_NUM_THREADS``), so latency is comparable
    with ONNX Runtime at the same count; ``hint`` is OpenVINO's performance hint (LATENCY for batch-1 edge use).
    ``prepare`` stages the input tensor on a request once, so ``run`` times inference only; that request belongs to
    a copy of the model compiled for the staged input's exact shape (``static_shape``, the default), because the
    CPU plugin runs an IR with a dynamic batch through its dynamic-shape path, which made MobileNet-V3-Small 1.5x
    slower at batch 1 (``benchmarks/results/openvino-cpu-2core/``), while a deployment box compiles for the batch
    it runs. ``infer`` keeps the dynamic model, so any batch size can be checked.
    ``inference_precision``: the CPU plugin's compute precision. It defaults to BF16 on CPUs that have it (this
    one does), which moves FP32 logits by ~4e-4, outside the parity tolerance; ``f32`` (the default here) keeps
    an FP32 IR an FP32 model, ``bf16`` asks for the faster form explicitly.
    """

    name = "openvino"

    def __init__(self, xml_path: str | Path, device: str = "cpu", threads: int | None = None,
                 hint: str = "LATENCY", inference_precision: str = "f32", static_shape: bool = True) -> None:
        ov = import_openvino()
        self.path = Path(xml_path)
        if not self.path.is_file() or not self.path.with_suffix(".bin").is_file():
            raise UserError(f"{self.path}: OpenVINO IR not found (it needs the .xml and its .bin beside it); "
                            "convert one with `augkd-edge export --openvino`.")
        if hint not in HINTS:
            raise UserError(f"performance hint {hint!r}: use one of {', '.join(HINTS)}.")
        core = ov.Core()
        self.ov_device = _device_name(core, device)
        self.device = "cpu" if self.ov_device == "CPU" else self.ov_device.lower()
        if inference_precision not in ("f32", "bf16"):
            raise UserError(f"inference precision {inference_precision!r}: use f32 or bf16.")
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
        if self.ov_device == "CPU":
            config["INFERENCE_PRECISION_HINT"] = inference_precision
        if threads is not None:
            if threads < 1:
                raise UserError(f"threads must be >= 1, got {threads}")
            if self.ov_device == "CPU":
                config["INFERENCE_NUM_THREADS"] = threads
        self._core, self._config, self.static_shape = core, config, static_shape
        self.model = core.read_model(str(self.path))
        self.compiled = self._compile(self.model)
        self.precision = ir_precision(self.path)
        self.hint = hint
        self.request = self.compiled.create_infer_request()
        self._timed: Any = None
        self._staged: Any = None

    def _compile(self, model: Any) -> Any:
        try:
            return self._core.compile_model(model, self.ov_device, self._config)
        except Exception as exc:
            raise UserError(f"{self.path}: OpenVINO cannot compile this model for {self.ov_device}: "
                            f"{str(exc).splitlines()[0]}") from exc

    def infer(self, x: np.ndarray) -> np.ndarray:
        out = self.request.infer({0: check_images(x)})
        return np.array(out[self.compiled.output(0)], dtype=np.float32)

    def prepare(self, x: np.ndarray) -> None:
        ov = import_openvino()
        x = check_images(x)
        compiled = self.compiled
        if self.static_shape and not self.model.input(0).get_partial_shape().is_static:
            fixed = self.model.clone()
            fixed.reshape({0: list(x.shape)})
            compiled = self._compile(fixed)
        self._timed = compiled.create_infer_request()
        self._staged = ov.Tensor(x)  # the request reads this buffer on every run
        self._timed.set_input_tensor(self._staged)

    def run(self) -> None:
        self._require_prepared(self._staged)
        self._timed.infer()

    def close(self) -> None:
        self._staged = self._timed = None
        self.request = None
        self.compiled = None

