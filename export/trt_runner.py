"""Torch-free TensorRT latency benchmark, for Jetson boards and other machines without PyTorch.

JetPack images ship TensorRT and often no matching torch, so this runner needs
only ``tensorrt``, ``numpy`` and a CUDA Python binding: pycuda (what JetPack
users usually have) or NVIDIA's ``cuda-python`` when pycuda is absent. It uses
the same engine loader as ``runtimes.TrtRunner`` (``trt_loader.py``) and the
same measurement loop, statistics and report schema as ``augkd-edge bench``
(``latency.py``, ``bench_report.py``, ``bench_render.py``, ``envinfo.py``), so
a board's report goes straight into ``augkd-edge bench compare``.

Run inside the installed package::

    python -m augkd_edge.export.trt_runner student.engine --batch 1,8 --out report-orin

or copy the :data:`BOARD_FILES` into one folder on the board and run
``python3 trt_runner.py ...`` there (docs/jetson.md).

Layers: the :class:`cuda_binding.Cuda` binding (buffers, streams, events, memory info) and
:class:`EngineRunner` (a TensorRT 10 engine behind the runner interface of
``runtimes.py``) are the only code touching the GPU; :func:`main` sees them
through :class:`Engine`, so argument handling and the report are tested with a
fake engine on machines without a GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

if __package__:
    from . import bench_render, bench_report, envinfo, latency
    from .cuda_binding import BINDINGS, Cuda, load_binding
    from .trt_loader import EngineError, import_tensorrt, load_engine
else:  # loose copy on a board: the sibling files sit next to this one (sys.path[0])
    import bench_render  # type: ignore[no-redef]
    import bench_report  # type: ignore[no-redef]
    import envinfo  # type: ignore[no-redef]
    import latency  # type: ignore[no-redef]
    from cuda_binding import BINDINGS, Cuda, load_binding  # type: ignore[no-redef]
    from trt_loader import EngineError, import_tensorrt, load_engine  # type: ignore[no-redef]

TOOL = "trt_runner"
TOOL_VERSION = "1"
#: what a board needs from export/ (this file and every module it imports, none of them torch)
BOARD_FILES = ("trt_runner.py", "trt_loader.py", "cuda_binding.py", "latency.py", "bench_report.py", "bench_render.py",
               "atomic.py", "envinfo.py")


class Engine(Protocol):
    """What :func:`main` needs from an opened engine (runner interface plus its clocks and
    the facts that go into the report)."""

    name: str
    device: str
    precision: str
    input_size: int

    def infer(self, x: np.ndarray) -> np.ndarray: ...
    def prepare(self, x: np.ndarray) -> None: ...
    def run(self) -> None: ...
    def close(self) -> None: ...
    def clock(self, timing: str) -> latency.Clock: ...
    def memory(self) -> latency.DeviceMemory | None: ...
    def device_info(self) -> dict[str, Any]: ...
    def info(self) -> dict[str, Any]: ...


class _EventClock:
    """CUDA events around the engine's enqueue only: GPU time, without host launch/sync overhead."""

    name = "cuda-events"

    def __init__(self, runner: "EngineRunner") -> None:
        self._runner = runner
        self._start, self._end = runner.cuda.event(), runner.cuda.event()

    def time_ms(self, fn: Callable[[], None]) -> float:
        # ``fn`` is the runner's synchronising run(); the event pair brackets its enqueue instead.
        cuda, stream = self._runner.cuda, self._runner.stream
        cuda.record(self._start, stream)
        self._runner.enqueue()
        cuda.record(self._end, stream)
        return cuda.elapsed_ms(self._start, self._end)


class _CudaMemoryInUse:
    """Device memory in use after a cell (cudaMemGetInfo: device-wide, other processes included;
    on Jetson the GPU shares system memory, so this is system memory in use)."""

    name = "cuda-mem-in-use"

    def __init__(self, cuda: Cuda) -> None:
        self._cuda = cuda

    def reset(self) -> None:
        pass

    def peak_mb(self) -> float | None:
        free, total = self._cuda.mem_get_info()
        return (total - free) / 2**20


class EngineRunner:
    """A serialized TensorRT 10 engine with one input and one output, on device buffers of :class:`Cuda`.

    Dynamic batch is set per ``prepare`` within the engine's optimisation
    profile; buffers are reallocated only when a batch needs more room.
    """

    name = "trt"
    device = "cuda"

    def __init__(self, engine_path: str | Path, cuda: Cuda, precision: str | None = None) -> None:
        self.path = Path(engine_path)
        self.cuda = cuda
        self._loaded = load_engine(self.path)  # the same loader as runtimes.TrtRunner
        trt = self._loaded.trt
        self.engine, self.context = self._loaded.engine, self._loaded.context
        self.input_name, self.output_name = self._loaded.input_name, self._loaded.output_name
        self.input_size = int(self.engine.get_tensor_shape(self.input_name)[-1])
        self.precision = precision or str(self._loaded.metadata.get("precision", "unknown"))
        self._in_dtype = trt.nptype(self.engine.get_tensor_dtype(self.input_name))
        self._out_dtype = trt.nptype(self.engine.get_tensor_dtype(self.output_name))
        self.stream = cuda.stream()
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, capacity in bytes)
        self._host_out: np.ndarray | None = None
        self._prepared = False

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, capacity = self._buffers.get(name, (0, 0))
        if nbytes > capacity:
            if ptr:
                self.cuda.free(ptr)
            ptr, capacity = self.cuda.malloc(nbytes), nbytes
            self._buffers[name] = (ptr, capacity)
        return ptr

    def prepare(self, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=self._in_dtype)
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise ValueError(f"input shape {tuple(x.shape)} is outside the engine's optimisation profile "
                             f"{self._loaded.profile()}")
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        self._host_out = np.empty(out_shape, dtype=self._out_dtype)
        in_ptr = self._buffer(self.input_name, x.nbytes)
        out_ptr = self._buffer(self.output_name, self._host_out.nbytes)
        self.context.set_tensor_address(self.input_name, in_ptr)
        self.context.set_tensor_address(self.output_name, out_ptr)
        self.cuda.htod(in_ptr, x)  # synchronous: staging is outside the timed loop
        self._prepared = True

    def enqueue(self) -> None:
        if not self._prepared:
            raise RuntimeError("EngineRunner.run() called before prepare(x)")
        if not self.context.execute_async_v3(self.cuda.stream_handle(self.stream)):
            raise RuntimeError(f"{self.path}: TensorRT execution failed")

    def run(self) -> None:
        self.enqueue()
        self.cuda.synchronize(self.stream)

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.prepare(x)
        self.run()
        assert self._host_out is not None
        self.cuda.dtoh(self._host_out, self._buffers[self.output_name][0])
        return self._host_out.astype(np.float32)

    def clock(self, timing: str) -> latency.Clock:
        return _EventClock(self) if timing == "events" else latency.HostClock()

    def memory(self) -> latency.DeviceMemory | None:
        return _CudaMemoryInUse(self.cuda)

    def device_info(self) -> dict[str, Any]:
        return self.cuda.device_info()

    def info(self) -> dict[str, Any]:
        size = getattr(self.engine, "device_memory_size_v2", None) or getattr(self.engine, "device_memory_size", 0)
        return {"cuda_binding": self.cuda.name, "engine_activation_mb": size / 2**20,
                "profile": self._loaded.profile()}

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self.cuda.free(ptr)
        self._buffers.clear()
        self.context = self.engine = self._loaded = None
        self.cuda.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (argparse: the board may not have click)."""
    p = argparse.ArgumentParser(
        prog="trt_runner",
        description="Measure a TensorRT engine's latency without PyTorch; writes report.json/.md/.html "
                    "in the augkd-edge bench schema.")
    p.add_argument("engine", type=Path, help="serialized TensorRT engine (.engine / .plan)")
    p.add_argument("--batch", default="1,8,32", help="batch sizes, comma list (default 1,8,32)")
    p.add_argument("--warmup", type=int, default=latency.DEFAULT_WARMUP,
                   help=f"untimed iterations per batch (default {latency.DEFAULT_WARMUP})")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--iters", type=int, default=None,
                        help=f"timed iterations per batch (default {latency.DEFAULT_ITERS})")
    budget.add_argument("--seconds", type=float, default=None, help="time budget per batch instead of --iters")
    p.add_argument("--timing", choices=("sync", "events"), default="sync",
                   help="sync: host clock around enqueue+synchronise, comparable with augkd-edge bench "
                        "(default); events: CUDA events around the enqueue (GPU time only)")
    p.add_argument("--binding", choices=("auto", *BINDINGS), default="auto",
                   help="CUDA Python binding (default: pycuda if importable, else cuda-python)")
    p.add_argument("--precision", default=None,
                   help="precision label for the report when the engine has no ENGINE.json metadata")
    p.add_argument("--eval-npz", type=Path, default=None,
                   help="also report top-1 on a labelled split: .npz with 'images' (float32 NCHW in [0,1]) "
                        "and 'labels' (int)")
    p.add_argument("--label", default=None, help="machine label stored in the report (no hostname is recorded)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    args = p.parse_args(argv)
    try:
        args.batches = sorted({int(b) for b in args.batch.split(",") if b.strip()})
        if not args.batches or min(args.batches) < 1:
            raise ValueError
    except ValueError:
        p.error(f"--batch {args.batch!r}: give comma-separated integers >= 1, such as 1,8,32")
    try:
        args.budget = latency.Budget.from_options(args.warmup, args.iters, args.seconds)
    except ValueError as exc:
        p.error(str(exc))
    if not args.engine.is_file():
        p.error(f"{args.engine}: no such engine file")
    if args.eval_npz is not None and not args.eval_npz.is_file():
        p.error(f"--eval-npz {args.eval_npz}: no such file")
    return args


def open_engine(args: argparse.Namespace) -> Engine:
    """The real GPU path: TensorRT + a CUDA binding."""
    import_tensorrt()  # before a CUDA context is made: its absence is the likelier problem
    cuda = load_binding(args.binding)
    try:
        return EngineRunner(args.engine, cuda, precision=args.precision)
    except BaseException:
        cuda.close()
        raise


def load_eval(path: Path) -> latency.EvalSplit:
    with np.load(path, allow_pickle=False) as data:
        if "images" not in data or "labels" not in data:
            raise EngineError(f"{path}: needs arrays 'images' (float32 NCHW in [0, 1]) and 'labels'.")
        return latency.EvalSplit(path.stem, data["images"].astype(np.float32), data["labels"].astype(np.int64))


def main(argv: Sequence[str] | None = None, opener: Callable[[argparse.Namespace], Engine] = open_engine) -> int:
    """Benchmark one engine over the batch sizes and write the report; returns the exit code."""
    args = parse_args(argv)
    try:
        split = load_eval(args.eval_npz) if args.eval_npz else None
        engine = opener(args)
    except EngineError as exc:
        print(f"trt_runner: error: {exc}", file=sys.stderr)
        return 2
    gpus = [engine.device_info()]
    target = latency.Target(model=args.engine.name, backend="trt", device="cuda", precision=engine.precision,
                            input_size=engine.input_size, open=lambda: engine, clock=engine.clock(args.timing),
                            device_memory=engine.memory(), info=engine.info())
    rows = latency.run_grid([target], args.batches, args.budget, eval_split=split,
                            on_error=lambda msg: print(f"failed: {msg}", file=sys.stderr))
    environment = envinfo.capture(label=args.label, gpus=gpus, threads={})
    report = bench_report.build_report(rows, environment, args.budget.as_dict(), TOOL, TOOL_VERSION)
    for path in bench_render.write_report(report, args.out):
        print(f"wrote {path}")
    for row in rows:
        if "error" not in row:
            lat = row["latency_ms"]
            print(f"batch {row['batch']:>4}: median {lat['median']:.3f} ms  p99 {lat['p99']:.3f} ms  "
                  f"{row['throughput_ips']:.1f} images/s")
    return 0 if any("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
