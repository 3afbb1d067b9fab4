"""Loading a serialized TensorRT 10 engine: the one loader behind both TensorRT runners.

As in Polygraphy (``polygraphy/backend/trt/loader.py`` apart from its runners),
deserialising an engine, finding its I/O tensors and reading its metadata is
done here once; the runners only add I/O buffers: ``runtimes.TrtRunner`` with
torch CUDA tensors, ``trt_runner.EngineRunner`` with a torch-free CUDA binding.

Standard library only (``tensorrt`` is imported when an engine is loaded), so
this file is copied to a Jetson board next to ``trt_runner.py`` (docs/jetson.md).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

try:  # inside the augkd_edge package, engine problems are ordinary user errors
    from augkd_edge.errors import UserError as _UserFacing
except ImportError:  # loose copy on a board
    _UserFacing = RuntimeError  # type: ignore[assignment,misc]


class EngineError(_UserFacing):
    """An engine or TensorRT problem the user fixes; the message names the file and the fix."""


def engine_metadata_path(engine_path: str | Path) -> Path:
    """Where the metadata of an engine lives: ``student.engine`` -> ``student.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def read_engine_metadata(engine_path: str | Path) -> dict[str, Any]:
    """The metadata written by ``export.tensorrt`` next to an engine, or ``{}`` for an engine built another way.

    A deserialized engine does not say which builder flags made it, so its precision comes from here.
    """
    path = engine_metadata_path(engine_path)
    return json.loads(path.read_text()) if path.is_file() else {}


def import_tensorrt() -> Any:
    """``import tensorrt`` with an actionable message when it is missing."""
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError as exc:
        raise EngineError(
            f"TensorRT's Python bindings are not importable here ({exc}): on Jetson they come with JetPack "
            f"(python3-libnvinfer), elsewhere `pip install tensorrt` on a machine with an NVIDIA GPU. Without "
            f"TensorRT, `augkd-edge export --trt` writes build_engine.sh to build the engine on the target "
            f"with trtexec."
        ) from exc
    return trt


@dataclasses.dataclass
class LoadedEngine:
    """A deserialized one-input, one-output engine and its execution context.

    The logger and runtime are kept because the engine must not outlive them.
    """

    path: Path
    trt: Any
    logger: Any
    runtime: Any
    engine: Any
    context: Any
    input_name: str
    output_name: str
    metadata: dict[str, Any]

    def profile(self) -> list[list[int]]:
        """(min, opt, max) input shapes of the engine's first optimisation profile."""
        return [list(map(int, s)) for s in self.engine.get_tensor_profile_shape(self.input_name, 0)]


def load_engine(engine_path: str | Path) -> LoadedEngine:
    """Deserialize a TensorRT 10 engine with one input and one output tensor (EngineError otherwise)."""
    path = Path(engine_path)
    if not path.is_file():
        raise EngineError(f"{path}: engine file not found; build one with `augkd-edge export --trt`.")
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise EngineError(f"{path}: TensorRT {trt.__version__} cannot deserialize this engine (built with "
                          f"another TensorRT version or for another GPU? engines are not portable); rebuild it "
                          f"on this machine.")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if len(inputs) != 1 or len(outputs) != 1:
        raise EngineError(f"{path}: expected one input and one output tensor, got {inputs} -> {outputs}.")
    return LoadedEngine(path=path, trt=trt, logger=logger, runtime=runtime, engine=engine,
                        context=engine.create_execution_context(), input_name=inputs[0], output_name=outputs[0],
                        metadata=read_engine_metadata(path))
