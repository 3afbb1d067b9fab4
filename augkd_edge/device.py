"""Where and how a run computes: device choice, deterministic kernels, batches prepared ahead.

Next to ``distributed.py``, which picks each torchrun rank's device with :func:`select_device`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from augkd_edge.errors import UserError

if TYPE_CHECKING:
    import torch


def select_device(name: str = "auto") -> "torch.device":
    """``auto`` picks CUDA when present; an explicit request that cannot be met is a user error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible to PyTorch; use --device cpu or auto.")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"--device {name!r} is not a device name (use auto, cpu, cuda, cuda:N)") from exc


def prefetch(batches: Iterator[Any], depth: int) -> Iterator[Any]:
    """Produce ``batches`` in a background thread, ``depth`` ahead, in the same order.

    One producer keeps the order (and the seeded augmentation) exactly as
    without prefetching; an exception in the producer is re-raised here.
    """
    import queue
    import threading

    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in batches:
                if stop.is_set():
                    return
                q.put((True, item))
            q.put((True, done))
        except BaseException as exc:  # handed to the consumer
            q.put((False, exc))

    thread = threading.Thread(target=produce, daemon=True, name="augkd-prefetch")
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def prefetch_depth(device: "torch.device") -> int:
    """Batches to prepare ahead for ``fit``: 2 when a GPU would otherwise wait, none on CPU.

    On a CPU the producer thread would only compete with training for the same cores.
    """
    return 2 if device.type == "cuda" else 0


def set_deterministic(enabled: bool = True) -> None:
    """Deterministic kernels (``--deterministic``): same inputs, same bits, at some speed cost.

    CUDA's cuBLAS needs its workspace config set before the first matmul;
    cuDNN's autotuner is turned off because it may pick different algorithms
    in different processes.
    """
    import os

    import torch

    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
