"""TensorRT 10 engines: built here when TensorRT is importable, else a bundle to build on the target.

An engine is tied to the GPU model and the TensorRT version that built it, so
for a Jetson it *must* be built on the board. Two paths, same settings:

- :func:`build_engine` uses the TensorRT 10 Python API (ONNX parser, builder
  config, an optimisation profile for the batch range, a timing cache reused
  across builds, FP16 flag, INT8 from the QDQ model's explicit quantization:
  no calibrator) and writes ``<engine>`` plus ``<engine>.json`` metadata;
- :func:`write_build_script` writes ``build_engine.sh`` holding the equivalent
  ``trtexec`` command, for machines where only the target has TensorRT.

Precision: ``int8`` needs the QDQ model (``export.quantize``); the INT8 flag
lets TensorRT honour its Q/DQ nodes and ``--fp16`` additionally lets the
layers left unquantized run in half precision.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from augkd_edge.errors import UserError
from augkd_edge.export.atomic import write_bytes_atomic, write_text_atomic
from augkd_edge.export.trt_loader import engine_metadata_path, import_tensorrt

TIMING_CACHE_NAME = "timing.cache"


@dataclass(frozen=True)
class EngineSettings:
    """Builder settings shared by the Python build and the trtexec script.

    ``static_batch``: the ONNX graph's fixed batch, if any; a static graph has no
    optimisation profile (trtexec refuses shape flags for it).
    """

    input_name: str
    input_size: int
    fp16: bool = False
    int8: bool = False
    workspace_mb: int = 1024
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    static_batch: int | None = None

    def __post_init__(self) -> None:
        if self.workspace_mb < 1:
            raise UserError(f"--workspace {self.workspace_mb}: give the builder's workspace in MiB (>= 1).")
        if self.static_batch is None and not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise UserError(
                f"batch profile min {self.min_batch} / opt {self.opt_batch} / max {self.max_batch}: "
                f"need 1 <= --min-batch <= --opt-batch <= --max-batch."
            )

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else "fp16" if self.fp16 else "fp32"

    def shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, 3, self.input_size, self.input_size)

    def profile(self) -> dict[str, list[int]] | None:
        """min/opt/max input shapes, or None for a static graph."""
        if self.static_batch is not None:
            return None
        return {k: list(self.shape(b)) for k, b in
                (("min", self.min_batch), ("opt", self.opt_batch), ("max", self.max_batch))}

    def to_dict(self) -> dict:
        return {**asdict(self), "precision": self.precision, "profile": self.profile()}


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path, precision: str) -> dict:
    """export.json's record of one written file: its hash, size and precision."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size, "precision": precision}


def write_json_atomic(obj: dict, path: str | Path) -> Path:
    """``export.json`` and engine metadata: indented JSON, through the project's one atomic write."""
    return write_text_atomic(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)


def trtexec_command(onnx_file: str, engine_file: str, settings: EngineSettings,
                    timing_cache: str = TIMING_CACHE_NAME, trtexec: str = "trtexec") -> list[str]:
    """The trtexec argument list equivalent to :func:`build_engine` with ``settings``."""

    def dims(batch: int) -> str:
        return f"{settings.input_name}:" + "x".join(str(d) for d in settings.shape(batch))

    cmd = [trtexec, f"--onnx={onnx_file}", f"--saveEngine={engine_file}"]
    if settings.static_batch is None:
        cmd += [f"--minShapes={dims(settings.min_batch)}", f"--optShapes={dims(settings.opt_batch)}",
                f"--maxShapes={dims(settings.max_batch)}"]
    if settings.fp16:
        cmd.append("--fp16")
    if settings.int8:
        cmd.append("--int8")
    cmd += [f"--memPoolSize=workspace:{settings.workspace_mb}M", f"--timingCacheFile={timing_cache}",
            "--skipInference"]
    return cmd


_SCRIPT = """#!/usr/bin/env bash
# Builds the TensorRT engine of this export ON THE TARGET (a Jetson builds its own:
# engines only run on the GPU model and TensorRT version that built them).
# Written by augkd-edge export: {precision} precision, {profile_text}.
# The timing cache is reused by later builds on the same device (faster rebuilds).
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
if [ ! -x "$TRTEXEC" ]; then
  echo "trtexec not found: install TensorRT (JetPack ships it in /usr/src/tensorrt/bin) or set TRTEXEC=/path/to/trtexec" >&2
  exit 1
fi
{command}
cat > {meta_file} <<'JSON'
{meta_json}
JSON
echo "built {engine_file}"
"""


def write_build_script(out_dir: str | Path, onnx_file: str, engine_file: str, settings: EngineSettings,
                       extra_metadata: dict | None = None) -> Path:
    """``build_engine.sh`` in ``out_dir`` (next to ``onnx_file``), plus the engine metadata it writes.

    File names are relative so the folder can be copied to the board as is.
    """
    out_dir = Path(out_dir)
    cmd = trtexec_command(onnx_file, engine_file, settings, trtexec="__TRTEXEC__")
    command = " ".join(shlex.quote(c) for c in cmd).replace("__TRTEXEC__", '"$TRTEXEC"')
    meta = engine_metadata(settings, onnx_file, builder="trtexec (build_engine.sh)", **(extra_metadata or {}))
    profile = settings.profile()
    profile_text = (f"batch {settings.min_batch}/{settings.opt_batch}/{settings.max_batch} (min/opt/max)"
                    if profile else f"static batch {settings.static_batch}")
    text = _SCRIPT.format(precision=settings.precision, profile_text=profile_text, command=command,
                          meta_file=shlex.quote(engine_metadata_path(engine_file).name),
                          meta_json=json.dumps(meta, indent=2), engine_file=engine_file)
    script = out_dir / "build_engine.sh"
    write_bytes_atomic(text.encode(), script)
    script.chmod(0o755)
    return script


def engine_metadata(settings: EngineSettings, onnx_file: str | Path, builder: str, **extra: object) -> dict:
    """What a runner needs to know about an engine it cannot ask (precision, profile)."""
    return {
        "format": "augkd-edge/engine",
        "version": 1,
        "builder": builder,
        "onnx": Path(onnx_file).name,
        "input_name": settings.input_name,
        "precision": settings.precision,
        "fp16": settings.fp16,
        "int8": settings.int8,
        "profile": settings.profile(),
        "static_batch": settings.static_batch,
        "workspace_mb": settings.workspace_mb,
        **extra,
    }


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except UserError:
        return False
    return True


def build_engine(onnx_path: str | Path, engine_path: str | Path, settings: EngineSettings,
                 timing_cache_path: str | Path | None = None) -> dict:
    """Build and save a serialized engine with the TensorRT 10 Python API; returns its metadata.

    The timing cache (tactic timings) is loaded when present and saved back, so
    rebuilding for another precision or batch range on the same GPU is fast.
    """
    trt = import_tensorrt()
    import torch

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not torch.cuda.is_available():
        raise UserError("TensorRT is installed but no CUDA GPU is visible; build the engine on the target.")
    timing_cache_path = Path(timing_cache_path or engine_path.with_name(TIMING_CACHE_NAME))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"{onnx_path}: TensorRT's ONNX parser rejected the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    if settings.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if settings.int8:
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: the Q/DQ scales are in the graph
    profile = settings.profile()
    if profile is not None:
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(settings.input_name, profile["min"], profile["opt"], profile["max"])
        config.add_optimization_profile(opt_profile)
    cache_blob = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - start
    if serialized is None:
        raise UserError(f"{onnx_path}: TensorRT could not build an engine (see the TensorRT log above).")
    write_bytes_atomic(bytes(serialized), engine_path)
    write_bytes_atomic(bytes(config.get_timing_cache().serialize()), timing_cache_path)
    major, minor = torch.cuda.get_device_capability()
    meta = engine_metadata(
        settings, onnx_path, builder="tensorrt python api",
        tensorrt_version=trt.__version__,
        gpu=torch.cuda.get_device_name(),
        compute_capability=f"{major}.{minor}",
        build_seconds=round(build_s, 2),
        timing_cache=timing_cache_path.name,
        onnx_sha256=sha256_file(onnx_path),
        engine_sha256=sha256_file(engine_path),
    )
    write_json_atomic(meta, engine_metadata_path(engine_path))
    return meta
