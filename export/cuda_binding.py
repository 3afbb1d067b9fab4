"""CUDA from Python without torch, for the Jetson runner: pycuda or NVIDIA's cuda-python behind one small interface.

JetPack users usually have pycuda; where it is absent, cuda-python serves.
:func:`load_binding` picks one. Standard library + numpy only; copied to a
board next to ``trt_runner.py`` (docs/jetson.md).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np

if __package__:
    from .trt_loader import EngineError
else:  # loose copy on a board: the sibling files sit next to this one
    from trt_loader import EngineError  # type: ignore[no-redef]


class Cuda(Protocol):
    """The CUDA calls the runner needs; pycuda and cuda-python each implement it.

    Copies are synchronous (numpy's pageable memory; staging is outside the timed loop).
    """

    name: str

    def malloc(self, nbytes: int) -> int: ...
    def free(self, ptr: int) -> None: ...
    def htod(self, ptr: int, host: np.ndarray) -> None: ...
    def dtoh(self, host: np.ndarray, ptr: int) -> None: ...
    def stream(self) -> Any: ...
    def stream_handle(self, stream: Any) -> int: ...
    def synchronize(self, stream: Any) -> None: ...
    def event(self) -> Any: ...
    def record(self, event: Any, stream: Any) -> None: ...
    def elapsed_ms(self, start: Any, end: Any) -> float: ...
    def mem_get_info(self) -> tuple[int, int]: ...
    def device_info(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class PyCuda:
    """pycuda, on the device's primary context (the one TensorRT's runtime calls use)."""

    name = "pycuda"

    def __init__(self, device: int = 0) -> None:
        import pycuda.driver as cuda

        cuda.init()
        self._cuda = cuda
        self._device = cuda.Device(device)
        self._context = self._device.retain_primary_context()
        self._context.push()
        self._allocations: dict[int, Any] = {}

    def malloc(self, nbytes: int) -> int:
        allocation = self._cuda.mem_alloc(max(int(nbytes), 1))
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, ptr: int) -> None:
        self._allocations.pop(ptr).free()

    def htod(self, ptr: int, host: np.ndarray) -> None:
        self._cuda.memcpy_htod(ptr, host)

    def dtoh(self, host: np.ndarray, ptr: int) -> None:
        self._cuda.memcpy_dtoh(host, ptr)

    def stream(self) -> Any:
        return self._cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def event(self) -> Any:
        return self._cuda.Event()

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(start.time_till(end))

    def mem_get_info(self) -> tuple[int, int]:
        free, total = self._cuda.mem_get_info()
        return int(free), int(total)

    def device_info(self) -> dict[str, Any]:
        major, minor = self._device.compute_capability()
        driver = self._cuda.get_driver_version()
        return {"name": self._device.name(), "driver": f"CUDA {driver // 1000}.{driver % 1000 // 10}",
                "compute_capability": f"{major}.{minor}",
                "memory_total_mb": self._device.total_memory() / 2**20}

    def close(self) -> None:
        for allocation in self._allocations.values():
            allocation.free()
        self._allocations.clear()
        self._context.pop()
        self._context.detach()


class CudaPython:
    """NVIDIA's cuda-python runtime bindings (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6)."""

    name = "cuda-python"

    def __init__(self, device: int = 0) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # type: ignore[no-redef]
        self._rt = cudart
        self._device = device
        self._call(cudart.cudaSetDevice(device))

    def _call(self, result: Any) -> Any:
        """cuda-python returns (error, values...); raise on error, return the values."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self._rt.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA runtime error {getattr(err, 'name', err)}")
        return values[0] if len(values) == 1 else tuple(values)

    def malloc(self, nbytes: int) -> int:
        return int(self._call(self._rt.cudaMalloc(max(int(nbytes), 1))))

    def free(self, ptr: int) -> None:
        self._call(self._rt.cudaFree(ptr))

    def htod(self, ptr: int, host: np.ndarray) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self._rt.cudaMemcpy(ptr, host.ctypes.data, host.nbytes, kind))

    def dtoh(self, host: np.ndarray, ptr: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self._rt.cudaMemcpy(host.ctypes.data, ptr, host.nbytes, kind))

    def stream(self) -> Any:
        return self._call(self._rt.cudaStreamCreate())

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def synchronize(self, stream: Any) -> None:
        self._call(self._rt.cudaStreamSynchronize(stream))

    def event(self) -> Any:
        return self._call(self._rt.cudaEventCreate())

    def record(self, event: Any, stream: Any) -> None:
        self._call(self._rt.cudaEventRecord(event, stream))

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self._call(self._rt.cudaEventSynchronize(end))
        return float(self._call(self._rt.cudaEventElapsedTime(start, end)))

    def mem_get_info(self) -> tuple[int, int]:
        free, total = self._call(self._rt.cudaMemGetInfo())
        return int(free), int(total)

    def device_info(self) -> dict[str, Any]:
        props = self._call(self._rt.cudaGetDeviceProperties(self._device))
        driver = int(self._call(self._rt.cudaDriverGetVersion()))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return {"name": name.rstrip("\x00"), "driver": f"CUDA {driver // 1000}.{driver % 1000 // 10}",
                "compute_capability": f"{props.major}.{props.minor}",
                "memory_total_mb": props.totalGlobalMem / 2**20}

    def close(self) -> None:
        pass


BINDINGS: dict[str, Callable[[], Cuda]] = {"pycuda": PyCuda, "cuda-python": CudaPython}


def load_binding(choice: str = "auto") -> Cuda:
    """pycuda when importable (JetPack's usual), else cuda-python; or the one asked for."""
    order = list(BINDINGS) if choice == "auto" else [choice]
    errors = []
    for name in order:
        try:
            return BINDINGS[name]()
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
        except Exception as exc:  # imported, but CUDA itself is unusable (pycuda and cuda-python differ in types)
            raise EngineError(f"{name} is installed but CUDA is unusable here ({exc}); is the NVIDIA driver "
                              f"loaded and a GPU visible (nvidia-smi / tegrastats)?") from exc
    raise EngineError(
        "no CUDA Python binding is importable (" + "; ".join(errors) + "). "
        "Install one: `pip install pycuda` (JetPack: `sudo apt install python3-pycuda`) or "
        "`pip install cuda-python`."
    )
