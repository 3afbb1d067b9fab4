"""The runner interface every runtime implements (see ``runtimes.py``'s docstring for the four calls), apart from
the runners themselves so that a runner in its own module (``openvino.py``) and ``runtimes.open_runner``, which
opens it, do not import each other."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Runner(Protocol):
    """What parity and latency code rely on; see ``runtimes.py``'s docstring."""

    name: str  # "torch" | "ort" | "trt" | "openvino"
    device: str  # "cpu" | "cuda"
    precision: str  # "fp32" | "fp16" | "int8"

    def infer(self, x: np.ndarray) -> np.ndarray: ...

    def prepare(self, x: np.ndarray) -> None: ...

    def run(self) -> None: ...

    def close(self) -> None: ...


def check_images(x: np.ndarray) -> np.ndarray:
    """Refuse inputs that would silently give wrong logits (HWC, uint8, a missing batch axis)."""
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1] != 3:
        shape = getattr(x, "shape", None)
        raise ValueError(f"runner input must be a float32 NCHW array with 3 channels, got shape {shape}")
    if x.dtype != np.float32:
        raise ValueError(f"runner input must be float32 images in [0, 1], got dtype {x.dtype}")
    return np.ascontiguousarray(x)


class _RunnerBase:
    """Context-manager support and the 'prepare before run' guard shared by all runners."""

    name = ""
    device = "cpu"
    precision = "fp32"

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_prepared(self, staged: Any) -> None:
        if staged is None:
            raise RuntimeError(f"{type(self).__name__}.run() called before prepare(x)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device!r}, precision={self.precision!r})"
