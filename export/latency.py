"""Latency measurement and its statistics, shared by ``augkd-edge bench`` and the
torch-free Jetson runner.

This module imports only the standard library and numpy, so that it can be
copied to a board next to ``trt_runner.py``: a report from the board and one from
a workstation then use the same loop and the same numbers, and comparing them is
meaningful.

How a sample is taken: a runner's ``run()`` returns when the inference has
finished on its device (the runtime layer synchronises), so the host clock
(``time.perf_counter_ns``) around one call is the latency a caller sees, launch
overhead included. A device can offer its own clock (CUDA events) instead; the
report records which clock produced its numbers (``timing``).

Statistics: percentiles use numpy's ``"linear"`` method (type 7 of Hyndman & Fan,
the numpy / R default: linear interpolation between the two nearest order
statistics); ``std`` is the sample standard deviation (``ddof=1``; 0 for a single
sample); throughput is ``batch / mean latency`` in images per second.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np

# The measurement decisions, written once (numbers behind them: docs/decisions.md#export-and-benchmarks)
PERCENTILE_METHOD = "linear"
PERCENTILES = (90, 95, 99)
STD_DDOF = 1  # sample standard deviation
#: untimed calls before each (model, batch) cell, and timed calls per cell without a time budget
DEFAULT_WARMUP = 10
DEFAULT_ITERS = 100
#: a time budget still takes at least this many samples, so p99 is never a single value
MIN_BUDGET_ITERS = 10
#: and at most this many, so a budget on a very fast model keeps a bounded sample list
MAX_BUDGET_ITERS = 1_000_000


class Steppable(Protocol):
    """What the measurement loop needs from a runner (``export/runtimes.py``)."""

    def run(self) -> None: ...


class Clock(Protocol):
    """Times one call; ``name`` goes into the report as ``timing``."""

    name: str

    def time_ms(self, fn: Callable[[], None]) -> float: ...


class HostClock:
    """Wall time around a synchronised call: what an application waiting for the result sees."""

    name = "host-sync"

    def time_ms(self, fn: Callable[[], None]) -> float:
        start = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - start) / 1e6


@dataclasses.dataclass(frozen=True)
class Budget:
    """Warm-up plus either a fixed iteration count or a time budget (exactly one)."""

    warmup: int = DEFAULT_WARMUP
    iters: int | None = DEFAULT_ITERS
    seconds: float | None = None

    @classmethod
    def from_options(cls, warmup: int = DEFAULT_WARMUP, iters: int | None = None,
                     seconds: float | None = None) -> "Budget":
        """The command lines' rule: ``seconds`` when given, else ``iters`` (default :data:`DEFAULT_ITERS`)."""
        return cls(warmup=warmup, seconds=seconds,
                   iters=None if seconds is not None else (DEFAULT_ITERS if iters is None else iters))

    def __post_init__(self) -> None:
        if (self.iters is None) == (self.seconds is None):
            raise ValueError("give exactly one of iters and seconds")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.iters is not None and self.iters < 1:
            raise ValueError(f"iters must be >= 1, got {self.iters}")
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"seconds must be > 0, got {self.seconds}")

    def as_dict(self) -> dict[str, Any]:
        return {"warmup": self.warmup, "iters": self.iters, "seconds": self.seconds}


def measure(step: Callable[[], None], budget: Budget, clock: Clock | None = None) -> list[float]:
    """Per-call latencies in ms of ``step`` after ``budget.warmup`` untimed calls.

    Warm-up is not optional in spirit: first calls pay for lazy allocation, kernel
    selection and caches, which is not the steady-state latency a deployment sees.
    """
    clock = clock or HostClock()
    for _ in range(budget.warmup):
        step()
    if budget.iters is not None:
        return [clock.time_ms(step) for _ in range(budget.iters)]
    samples: list[float] = []
    deadline = time.perf_counter() + float(budget.seconds or 0.0)
    while len(samples) < MAX_BUDGET_ITERS and (
        len(samples) < MIN_BUDGET_ITERS or time.perf_counter() < deadline
    ):
        samples.append(clock.time_ms(step))
    return samples


def summarize(samples_ms: Sequence[float], batch: int) -> dict[str, Any]:
    """Statistics of one (backend, batch) cell, in the report's ``latency_ms`` layout.

    See the module docstring for the percentile and std conventions.
    """
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError("need at least one latency sample")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    mean = float(a.mean())
    latency = {
        "min": float(a.min()),
        "mean": mean,
        "std": float(a.std(ddof=STD_DDOF)) if a.size > 1 else 0.0,
        "median": float(np.percentile(a, 50, method=PERCENTILE_METHOD)),
        **{f"p{q}": float(np.percentile(a, q, method=PERCENTILE_METHOD)) for q in PERCENTILES},
        "max": float(a.max()),
    }
    return {
        "samples": int(a.size),
        "latency_ms": latency,
        "throughput_ips": batch * 1000.0 / mean if mean > 0 else float("inf"),
    }


class HostMemory:
    """Peak resident memory (RSS) of this process during one measurement.

    On Linux the kernel keeps the high-water mark (``VmHWM``) and lets a process
    reset it (``echo 5 > /proc/self/clear_refs``), which gives a true per-cell
    peak. Elsewhere the best portable number is the current RSS from psutil
    after the run, and ``peak_kind`` says so.
    """

    def __init__(self) -> None:
        self.peak_kind = "vmhwm" if self._reset_hwm() else "rss-after"

    @staticmethod
    def _reset_hwm() -> bool:
        if not sys.platform.startswith("linux"):
            return False
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return True
        except OSError:
            return False

    def reset(self) -> None:
        if self.peak_kind == "vmhwm":
            self._reset_hwm()

    def peak_mb(self) -> float | None:
        if self.peak_kind == "vmhwm":
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024.0
        try:
            import psutil
        except ImportError:
            return None
        return psutil.Process(os.getpid()).memory_info().rss / 2**20


class DeviceMemory(Protocol):
    """Optional GPU memory probe a runtime can offer (``None`` on CPU)."""

    name: str

    def reset(self) -> None: ...

    def peak_mb(self) -> float | None: ...


def random_images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """Benchmark input: NCHW float32 in [0, 1), the layout every backend takes.

    Values do not change the latency of these dense models; a fixed seed keeps
    runs identical anyway.
    """
    rng = np.random.default_rng(seed)
    return rng.random((batch, 3, size, size), dtype=np.float32)


def batched_logits(infer: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_size: int = 64,
                   fixed_batch: int | None = None) -> np.ndarray:
    """All logits of ``infer`` (a runner's ``infer``: images in [0, 1] -> logits) for ``images``,
    ``batch_size`` at a time.

    The one padding rule of the project: with ``fixed_batch`` (a graph or engine
    built for one static batch) every call gets exactly that many images, the last
    chunk padded by repeating its final image (real data, so no runtime sees an
    input unlike the ones it was calibrated and checked on); the padding's logits
    are dropped. Used by parity, the INT8 gate and ``--eval`` top-1 alike.
    """
    if len(images) == 0:
        raise ValueError("no images to run")
    step = fixed_batch or batch_size
    out = []
    for start in range(0, len(images), step):
        chunk = images[start:start + step]
        real = len(chunk)
        if fixed_batch is not None and real < fixed_batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed_batch - real, axis=0)])
        out.append(np.asarray(infer(np.ascontiguousarray(chunk, dtype=np.float32)))[:real])
    return np.concatenate(out)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1,)) -> dict[str, float]:
    """Top-k hit rates as fractions: ``{"top1": ..., "top3": ...}``.

    A k at or beyond the class count counts every sample as a hit; no samples give NaN.
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    if len(logits) != len(labels):
        raise ValueError(f"{len(logits)} logits for {len(labels)} labels")
    if len(labels) == 0:
        return {f"top{k}": float("nan") for k in ks}
    kmax = min(max(ks), logits.shape[1])
    if kmax == 1:
        ranked = logits.argmax(axis=1)[:, None]  # ties: the lower class index, as below
    else:
        ranked = np.argsort(-logits, axis=1, kind="stable")[:, :kmax]  # ties: the lower class index first
    hits = ranked == labels[:, None]
    # the mean in float32, as torch's: training reports, the teacher-trust weights derived from
    # them and export checks then give the same bits (docs/decisions.md#one-padding-rule-for-batched-logits)
    return {f"top{k}": float(hits[:, :k].any(axis=1).mean(dtype=np.float32)) if k <= kmax else 1.0 for k in ks}


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of correct argmax predictions."""
    return topk_accuracy(logits, labels, (1,))["top1"]


def top1(infer: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray,
         batch: int) -> float:
    """Top-1 accuracy of ``infer`` on a labelled split, ``batch`` images per call.

    Measured with the same runner as the latency so a precision's accuracy and
    speed come from one artefact (the FP32 / INT8 / FP16 trade-off table). Every
    call gets exactly ``batch`` images (the padding rule of :func:`batched_logits`)
    so engines built for one static batch size can be evaluated too.
    """
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError("need as many labels as images, and at least one")
    return top1_accuracy(batched_logits(infer, images, fixed_batch=batch), labels)


@dataclasses.dataclass
class Target:
    """One model on one backend: everything the grid needs to build and label a runner.

    ``open`` builds the runner lazily (a TensorRT engine or a CUDA context is not
    created before its turn) and may fill in ``input_size`` when only the opened
    model knows it (an engine); ``device_memory`` is the GPU probe, if any.
    """

    model: str
    backend: str
    device: str
    precision: str
    input_size: int | None
    open: Callable[[], Any]
    clock: Clock | None = None
    device_memory: DeviceMemory | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class EvalSplit:
    """A labelled split for ``--eval``: images NCHW float32 in [0, 1], int labels."""

    name: str
    images: np.ndarray
    labels: np.ndarray


def run_grid(
    targets: Sequence[Target],
    batches: Sequence[int],
    budget: Budget,
    eval_split: EvalSplit | None = None,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Measure every (target, batch) cell and return the report's ``results`` rows.

    A cell that fails (a TensorRT profile without batch 32, out of memory) becomes
    a row with ``error`` instead of ending the whole run: the other cells are
    still worth having, and the report says what did not work.
    """
    host = HostMemory()
    cells = [(t, b) for t in targets for b in batches]
    iterator = progress(cells) if progress else cells
    rows: list[dict[str, Any]] = []
    current: Target | None = None
    runner: Any = None
    accuracy: float | None = None
    try:
        for target, batch in iterator:
            if target is not current:  # one runner per target, closed before the next opens
                if runner is not None:
                    runner.close()
                current, runner, accuracy = target, None, None
            row = {
                "model": target.model,
                "backend": target.backend,
                "device": target.device,
                "precision": target.precision,
                "batch": int(batch),
                **target.info,
            }
            where = f"{target.model} [{target.backend}/{target.precision}] batch {batch}"
            try:
                if runner is None:
                    runner = target.open()
                row.update(measure_cell(runner, target, batch, budget, host))
            except Exception as exc:  # a failed cell is reported, not fatal (docstring)
                row["error"] = _one_line(exc)
                if on_error:
                    on_error(f"{where}: {row['error']}")
            if eval_split is not None and "error" not in row:
                try:
                    if accuracy is None:  # once per target: accuracy does not depend on timing
                        accuracy = top1(runner.infer, eval_split.images, eval_split.labels, batch)
                    row["top1"] = accuracy
                    row["eval"] = {"split": eval_split.name, "n": int(len(eval_split.labels))}
                except Exception as exc:  # keep the latency; say why there is no accuracy
                    row["eval_error"] = _one_line(exc)
                    if on_error:
                        on_error(f"{where} (eval): {row['eval_error']}")
            rows.append(row)
    finally:
        if runner is not None:
            runner.close()
    return rows


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def measure_cell(runner: Any, target: Target, batch: int, budget: Budget,
                 host: HostMemory | None = None) -> dict[str, Any]:
    """Latency, throughput and memory of one runner at one batch size."""
    host = host or HostMemory()
    clock = target.clock or HostClock()
    if not target.input_size:
        raise ValueError(f"{target.model}: input size unknown; give it explicitly")
    runner.prepare(random_images(batch, target.input_size))
    host.reset()
    if target.device_memory is not None:
        target.device_memory.reset()
    samples = measure(runner.run, budget, clock)
    row = {"input_shape": [int(batch), 3, target.input_size, target.input_size], **summarize(samples, batch)}
    row["timing"] = clock.name
    row["memory_mb"] = {
        "host_peak_rss": host.peak_mb(),
        "host_peak_kind": host.peak_kind,
        "device_peak": target.device_memory.peak_mb() if target.device_memory else None,
        "device_kind": target.device_memory.name if target.device_memory else None,
    }
    return row
