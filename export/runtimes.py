"""One interface over the runtimes a student is deployed on: PyTorch, ONNX Runtime, TensorRT, OpenVINO
(``export/openvino.py``).

Parity checks and latency measurement must not care which runtime answers, so
each backend is a *runner* (the Polygraphy idea) with the same four calls:

- ``infer(x)``: NCHW float32 images in [0, 1] -> float32 logits ``[N, K]``;
  synchronous, copies in and out (for parity / accuracy).
- ``prepare(x)`` then ``run()`` repeatedly: the input is staged on the device
  once and ``run`` does one inference, returning only when the device has
  finished, so a timing loop around ``run`` measures the model, not host copies.
- ``close()``: release sessions / engines / device memory (runners are also
  context managers).

Normalisation is part of the model here (the exported graph starts from [0, 1]
images), so every runner takes the same input.

Heavy modules (torch, onnxruntime, tensorrt) are imported inside the runners
that need them, so importing this module costs nothing and a missing runtime
only fails when that runner is created, with a message saying what to install.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from augkd_edge.errors import UserError
from augkd_edge.export.runner_base import Runner, _RunnerBase, check_images  # noqa: F401  (re-exported)
from augkd_edge.export.trt_loader import import_tensorrt, load_engine

if TYPE_CHECKING:
    from torch import nn

PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def _check_device(device: str) -> str:
    if device not in ("cpu", "cuda"):
        raise UserError(f"unknown device {device!r}; use 'cpu' or 'cuda'.")
    return device


class TorchRunner(_RunnerBase):
    """PyTorch eager (optionally replayed as a CUDA graph) as the reference runtime.

    ``model`` must already include the normalisation (see ``export.onnx.with_normalisation``).
    ``precision="fp16"`` casts the model to half on CUDA (inputs are cast inside
    ``infer``/``prepare``; logits come back as float32). CUDA graphs remove the
    per-kernel launch cost from small-batch latency, the regime edge models live in.
    """

    name = "torch"

    def __init__(
        self,
        model: "nn.Module",
        device: str = "cpu",
        cuda_graphs: bool = False,
        precision: str = "fp32",
    ) -> None:
        import torch

        self.device = _check_device(device)
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("TorchRunner(device='cuda'): no CUDA GPU is visible to PyTorch; use device='cpu'.")
        if cuda_graphs and device != "cuda":
            raise UserError("CUDA graphs need device='cuda'.")
        if precision not in ("fp32", "fp16"):
            raise UserError(f"TorchRunner precision {precision!r}: use fp32 or fp16 (int8 is an ONNX/TensorRT path).")
        if precision == "fp16" and device != "cuda":
            raise UserError("TorchRunner fp16 needs device='cuda' (half-precision convolutions are slow or missing on CPU).")
        self.precision = precision
        self.cuda_graphs = cuda_graphs
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        if precision == "fp16":  # .to() is in place: keep the caller's float32 weights intact
            model = copy.deepcopy(model)
        self.model = model.eval().to(device=device, dtype=self._dtype)
        self._static_in: Any = None
        self._static_out: Any = None
        self._graph: Any = None

    def _to_device(self, x: np.ndarray):
        import torch

        return torch.from_numpy(check_images(x)).to(self.device, dtype=self._dtype)

    def infer(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(self._to_device(x))
        return out.float().cpu().numpy()  # .cpu() waits for the device

    def prepare(self, x: np.ndarray) -> None:
        import torch

        self._static_in = self._to_device(x)
        self._graph = None
        if not self.cuda_graphs:
            return
        # Warm up on a side stream (cuDNN autotuning, lazy allocations) before capture,
        # as the CUDA-graph documentation requires.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(3):
                self.model(self._static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            self._static_out = self.model(self._static_in)
        self._graph = graph

    def run(self) -> None:
        import torch

        self._require_prepared(self._static_in)
        if self._graph is not None:
            self._graph.replay()
        else:
            with torch.inference_mode():
                self._static_out = self.model(self._static_in)
        if self.device == "cuda":
            torch.cuda.synchronize()

    def close(self) -> None:
        self._graph = self._static_in = self._static_out = None


def onnx_precision(model_path: str | Path) -> str:
    """Precision of an ONNX graph: int8 if it holds QDQ pairs, fp16 if its weights are half."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"}:
        return "int8"
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer):
        return "fp16"
    return "fp32"


class OrtRunner(_RunnerBase):
    """ONNX Runtime on CPU (``CPUExecutionProvider``) or CUDA (``CUDAExecutionProvider``).

    ``threads`` pins intra-op threads; latency numbers are only comparable when
    it is fixed (ORT otherwise takes every core it sees). ``prepare`` binds the
    input once with IOBinding so ``run`` measures inference, not the copy.
    """

    name = "ort"

    def __init__(self, onnx_path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        self.device = _check_device(device)
        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: ONNX file not found; export one with `augkd-edge export --onnx`.")
        provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            raise UserError(
                f"{self.path}: ONNX Runtime here has no {provider} (available: "
                f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use device='cpu'."
            )
        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise UserError(f"threads must be >= 1, got {threads}")
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=[provider])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise UserError(f"{self.path}: ONNX Runtime cannot load this model: {str(exc).splitlines()[0]}") from exc
        self.precision = onnx_precision(self.path)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self._binding: Any = None

    def infer(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: check_images(x)})[0]
        return np.asarray(out, dtype=np.float32)

    def prepare(self, x: np.ndarray) -> None:
        import onnxruntime as ort

        staged = ort.OrtValue.ortvalue_from_numpy(check_images(x), self.device, 0)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, staged)
        binding.bind_output(self.output_name, self.device)
        self._staged = staged  # the binding does not keep the OrtValue alive
        self._binding = binding

    def run(self) -> None:
        self._require_prepared(self._binding)
        self.session.run_with_iobinding(self._binding)
        self._binding.synchronize_outputs()

    def close(self) -> None:
        self._binding = None
        self._staged = None
        self.session = None


class TrtRunner(_RunnerBase):
    """A serialized TensorRT 10 engine, with torch CUDA tensors as I/O buffers.

    Loading (and the precision, from the engine's metadata file) is
    ``trt_loader.load_engine``, shared with the torch-free runner. Dynamic batch
    is handled per call through ``set_input_shape`` within the engine's
    optimisation profile.
    """

    name = "trt"
    device = "cuda"

    def __init__(self, engine_path: str | Path) -> None:
        trt = import_tensorrt()  # first: its absence is the most common problem and has the clearest fix
        import torch

        self.path = Path(engine_path)
        if not torch.cuda.is_available():
            raise UserError(f"{self.path}: TensorRT engines need a CUDA GPU and none is visible.")
        self._loaded = load_engine(self.path)
        self.metadata = self._loaded.metadata
        self.precision = str(self.metadata.get("precision", "fp32"))
        self.engine, self.context = self._loaded.engine, self._loaded.context
        self.input_name, self.output_name = self._loaded.input_name, self._loaded.output_name
        self._in_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.input_name))
        self._out_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.output_name))
        self._stream = torch.cuda.Stream()
        self._staged: Any = None
        self._out: Any = None

    def _bind(self, x: np.ndarray) -> None:
        import torch

        staged = torch.from_numpy(check_images(x)).to("cuda", dtype=self._in_dtype)
        if not self.context.set_input_shape(self.input_name, tuple(staged.shape)):
            raise UserError(
                f"{self.path}: input shape {tuple(staged.shape)} is outside the engine's optimisation "
                f"profile {self.metadata.get('profile', '(see the engine metadata)')}."
            )
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        self._out = torch.empty(out_shape, dtype=self._out_dtype, device="cuda")
        self._staged = staged
        self.context.set_tensor_address(self.input_name, staged.data_ptr())
        self.context.set_tensor_address(self.output_name, self._out.data_ptr())
        torch.cuda.synchronize()  # the copy above ran on the default stream

    def infer(self, x: np.ndarray) -> np.ndarray:
        self._bind(x)
        self.run()
        return self._out.float().cpu().numpy()

    def prepare(self, x: np.ndarray) -> None:
        self._bind(x)

    def run(self) -> None:
        self._require_prepared(self._staged)
        if not self.context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"{self.path}: TensorRT execution failed")
        self._stream.synchronize()

    def close(self) -> None:
        self._staged = self._out = None
        self.context = None
        self.engine = None
        self._loaded = None


def _torch_dtype(trt: Any, dtype: Any):
    import torch

    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT8: torch.int8,
        trt.DataType.INT32: torch.int32,
        trt.DataType.BOOL: torch.bool,
    }
    for attr, torch_dtype in (("INT64", torch.int64), ("BF16", torch.bfloat16)):
        if hasattr(trt.DataType, attr):
            table[getattr(trt.DataType, attr)] = torch_dtype
    if dtype not in table:
        raise UserError(f"TensorRT tensor type {dtype} has no torch equivalent for I/O buffers")
    return table[dtype]


def open_runner(
    target: "str | Path | nn.Module",
    device: str = "cpu",
    threads: int | None = None,
    cuda_graphs: bool = False,
) -> Runner:
    """The runner for a target: an ``nn.Module``, an ``.onnx`` file, an OpenVINO IR ``.xml`` or a TensorRT engine.

    For an IR, ``device`` is ``cpu`` or OpenVINO's own device name (``CPU``, ``GPU``, ``NPU``, ``AUTO``)."""
    if not isinstance(target, (str, Path)):  # a module: keep torch unimported for file targets
        return TorchRunner(target, device=device, cuda_graphs=cuda_graphs)
    path = Path(target)
    if path.suffix == ".onnx":
        return OrtRunner(path, device=device, threads=threads)
    if path.suffix == ".xml":
        from augkd_edge.export.openvino import OpenVinoRunner

        return OpenVinoRunner(path, device=device, threads=threads)
    if path.suffix in ENGINE_SUFFIXES:
        if device != "cuda":
            raise UserError(f"{path}: a TensorRT engine runs on device='cuda' only.")
        return TrtRunner(path)
    raise UserError(
        f"{path}: unknown model file type {path.suffix!r}; give an .onnx file, an OpenVINO IR (.xml) or a "
        f"TensorRT engine ({', '.join(ENGINE_SUFFIXES)})."
    )
