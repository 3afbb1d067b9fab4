"""Which implementation an op runs: the fused Triton kernel or the PyTorch reference.

The training stack never calls a Triton kernel directly; every op asks
:func:`use_triton` at call time. The choice is, in order of precedence:

1. :func:`set_backend` / the :func:`backend` context manager (code that needs a
   specific path, e.g. the benchmark comparing fused and eager);
2. the environment variable ``AUGKD_KERNELS`` (``auto``, ``triton`` or
   ``reference``), read on every call so tests and users can flip it without
   re-importing. This is the one documented exception to "no module reads
   environment variables": it is a debugging switch that must reach code deep
   inside training loops without threading an option through every layer.

``auto`` (the default) takes Triton when every tensor is on a CUDA device and
``triton`` imports, else the reference. ``triton`` forces the kernels; on CPU
tensors that only works under Triton's interpreter (``TRITON_INTERPRET=1``, set
before the process imports triton, which fixes the mode of its standard library
at import), which is how CI proves the kernels equal the reference without a GPU.

Triton is imported lazily so ``import augkd_edge.kernels`` works where it is
absent (CPU-only wheels, Jetson boards): the reference path needs only torch.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

from augkd_edge.errors import UserError

ENV_VAR = "AUGKD_KERNELS"
BACKENDS = ("auto", "triton", "reference")

_forced: str | None = None

T = TypeVar("T")


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def set_backend(name: str | None) -> None:
    """Force a backend for the whole process; ``None`` returns control to ``AUGKD_KERNELS``."""
    global _forced
    _forced = None if name is None else _check_name(name)


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Run a block with a forced backend, restoring the previous choice afterwards."""
    global _forced
    previous = _forced
    _forced = _check_name(name)
    try:
        yield
    finally:
        _forced = previous


def current_backend() -> str:
    """The backend requested now (before looking at devices)."""
    if _forced is not None:
        return _forced
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise UserError(
            f"environment variable {ENV_VAR}={value!r} is not valid; "
            f"set it to one of {', '.join(BACKENDS)} or unset it"
        )
    return value


@functools.cache
def triton_available() -> bool:
    """Whether ``triton`` imports (cached: a failed import is slow and will not change)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """Whether Triton's interpreter is on (kernels then run on CPU tensors with numpy)."""
    try:
        from triton import knobs
    except ImportError:  # Triton without knobs; 3.6+ has them, the env var is the fallback
        return os.environ.get("TRITON_INTERPRET", "0") == "1"
    return bool(knobs.runtime.interpret)


def _stdlib_interpreted() -> bool:
    # Triton decorates its own standard library (tl.sum, tl.max, tl.zeros) when
    # triton.language is first imported, in whichever mode TRITON_INTERPRET
    # selected then; the interpreter cannot call the compiled versions.
    import triton.language as tl

    return type(tl.sum).__name__ == "InterpretedFunction"


def _check_mode() -> None:
    if interpreting() != _stdlib_interpreted():
        raise RuntimeError(
            "TRITON_INTERPRET changed after triton was imported: Triton fixes the mode of its standard "
            "library at import, so set TRITON_INTERPRET (or unset it) before the process imports triton"
        )


def use_triton(*tensors: torch.Tensor) -> bool:
    """Decide, for tensors about to enter an op, whether the Triton kernel runs.

    Raises instead of silently falling back when Triton was forced but cannot
    run: a benchmark or test that asked for the kernel must not measure the
    reference by accident.
    """
    name = current_backend()
    if name == "reference":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if name == "auto":
        if not (on_cuda and triton_available()):
            return False
        _check_mode()
        return True
    if not triton_available():
        raise RuntimeError(f"{ENV_VAR}=triton was requested but triton cannot be imported")
    if not on_cuda and not interpreting():
        raise RuntimeError(
            f"{ENV_VAR}=triton on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 "
            "before the process imports triton, move the tensors to a CUDA device, or use auto"
        )
    _check_mode()
    return True


def bind_triton(module_globals: dict[str, Any]) -> Callable[[Callable[..., Any]], Any]:
    """Import triton into an op module's globals and return ``triton.jit``.

    Kernel bodies are plain module-level functions that name ``tl``; Triton
    resolves those names in the function's module globals (closures are not
    seen by its interpreter), so ``tl`` must become a module global, but only
    when a kernel is first needed, never at import time.
    """
    import triton
    import triton.language as tl

    module_globals["triton"] = triton
    module_globals["tl"] = tl
    return triton.jit


def triton_kernels(build: Callable[[], T]) -> Callable[[], T]:
    """Build an op's ``@triton.jit`` kernels on first use, once per interpreter mode.

    Triton decides at decoration time whether a kernel is compiled or
    interpreted, so kernels cannot be decorated at import time (that would also
    import triton eagerly). Caching per mode lets one process (the test suite)
    run the interpreted kernels on CPU and the compiled ones on a GPU. Kernel
    bodies call no other ``@triton.jit`` helpers: a helper would have to be a
    module global decorated for one mode only.
    """
    cache: dict[bool, Any] = {}

    @functools.wraps(build)
    def get() -> T:
        mode = interpreting()
        if mode not in cache:
            cache[mode] = build()
        return cache[mode]

    return get


def device_guard(t: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
    """Make ``t``'s GPU current while launching, so kernels on ``cuda:1`` launch there."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


# Tiles hold 2048 (row reductions, many live fp32 arrays) to 4096 (elementwise) elements:
# 8 warps keep that at 8-16 values per thread, clear of register spills. A reasoned
# default, not yet tuned on a GPU (none was lent while these were written).
NUM_WARPS = 8


def tile(rows: int, cols: int, max_cols: int = 1024, elements: int = 4096) -> tuple[int, int]:
    """Block sizes (rows per program, columns per step) for a row-wise kernel.

    Many rows per program keeps small-row ops (K = 31 classes, L = 100 latents)
    from launching thousands of tiny programs; under the interpreter, whose cost
    is per program, it is the difference between 0.03 s and seconds per call.
    """
    import triton

    block_cols = max(16, min(triton.next_power_of_2(max(cols, 1)), max_cols))
    block_rows = max(1, min(elements // block_cols, triton.next_power_of_2(max(rows, 1))))
    return block_rows, block_cols
