"""The machine a latency report was measured on, without the machine's name.

A latency number means little without its CPU, GPU, driver, library versions
and thread settings, and comparing reports across machines needs them side by
side. This module records them using the standard library only (library
versions come from package metadata, not imports), so the Jetson runner can use
it on a board without torch.

Hostnames, user names and paths are deliberately left out: reports get
committed and shared. A person who wants to tell machines apart gives a
``label`` ("rtx4090-ws", "orin-nano-8gb").
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Any

#: distributions whose versions change latency (or explain a difference)
LIBRARIES = (
    "augkd-edge", "numpy", "torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu",
    "tensorrt", "pycuda", "cuda-python", "triton",
)
#: environment variables that change how many threads the CPU backends use
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8", "replace").replace("\x00", "").strip() or None
    except OSError:
        return None


def cpu_model() -> str | None:
    """The CPU's marketing name; ARM boards often only have ``CPU part`` codes."""
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Hardware", "Processor"):
        for line in text.splitlines():
            if line.split(":")[0].strip() == key and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def cpu_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    physical = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        pass
    return {
        "model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "usable_cores": usable,
    }


def library_versions() -> dict[str, str]:
    """Installed versions (package metadata, or ``__version__`` of an already imported module)."""
    found: dict[str, str] = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            module = sys.modules.get(name.replace("-", "_"))
            version = getattr(module, "__version__", None)
            if version:
                found[name] = str(version)
    # JetPack installs TensorRT's Python bindings from a .deb without metadata
    trt = sys.modules.get("tensorrt")
    if "tensorrt" not in found and trt is not None and getattr(trt, "__version__", None):
        found["tensorrt"] = str(trt.__version__)
    return found


def nvidia_smi_gpus(timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """GPUs as the driver reports them; empty without nvidia-smi (CPU machines, most Jetsons)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    fields = ("name", "driver_version", "compute_cap", "memory.total")
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=timeout_s, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        values = [v.strip() for v in line.split(",")]
        if len(values) != len(fields):
            continue
        name, driver, cc, mem = values
        gpus.append({
            "name": name,
            "driver": driver,
            "compute_capability": cc if cc and cc != "[N/A]" else None,
            "memory_total_mb": float(mem) if mem.replace(".", "", 1).isdigit() else None,
        })
    return gpus


def jetson_info() -> dict[str, Any] | None:
    """Board model and L4T release on NVIDIA Jetson (``None`` elsewhere)."""
    release = _read("/etc/nv_tegra_release")
    model = _read("/proc/device-tree/model")
    if release is None and (model is None or "jetson" not in model.lower()):
        return None
    return {"board": model, "l4t": release.splitlines()[0] if release else None}


def capture(label: str | None = None, gpus: list[dict[str, Any]] | None = None,
            threads: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report's ``environment`` block.

    ``gpus``: what the runtime itself found (torch / CUDA runtime device
    properties); when not given, nvidia-smi is asked. ``threads``: the thread
    settings the benchmark applied (they matter as much as the core count).
    """
    return {
        "label": label,
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "python": platform.python_version(),
        "cpu": cpu_info(),
        "gpus": gpus if gpus is not None else nvidia_smi_gpus(),
        "jetson": jetson_info(),
        "libraries": library_versions(),
        "threads": {
            **{name: os.environ.get(name) for name in THREAD_VARIABLES},
            **(threads or {}),
        },
    }
