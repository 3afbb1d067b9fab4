"""TensorRT: builder settings, the trtexec command and build_engine.sh bundle (testable
anywhere), and the real engine build + parity (skipped without TensorRT and a GPU)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from augkd_edge.errors import UserError
from augkd_edge.export.trt_loader import engine_metadata_path
from augkd_edge.export.tensorrt import (
    EngineSettings,
    tensorrt_available,
    trtexec_command,
    write_build_script,
)

BASH = shutil.which("bash")


def test_settings_validate_the_profile_and_workspace():
    with pytest.raises(UserError, match="--min-batch <= --opt-batch <= --max-batch"):
        EngineSettings("image", 32, min_batch=8, opt_batch=4, max_batch=32)
    with pytest.raises(UserError, match="--workspace"):
        EngineSettings("image", 32, workspace_mb=0)
    assert EngineSettings("image", 32, fp16=True).precision == "fp16"
    assert EngineSettings("image", 32, fp16=True, int8=True).precision == "int8"
    assert EngineSettings("image", 32, static_batch=4).profile() is None
    assert EngineSettings("image", 32).profile() == {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32],
                                                    "max": [32, 3, 32, 32]}


def test_trtexec_command_for_a_dynamic_int8_fp16_engine():
    settings = EngineSettings("image", 32, fp16=True, int8=True, workspace_mb=512, min_batch=1, opt_batch=4,
                              max_batch=16)
    cmd = trtexec_command("student.int8.onnx", "student.int8.engine", settings)
    assert cmd == [
        "trtexec", "--onnx=student.int8.onnx", "--saveEngine=student.int8.engine",
        "--minShapes=image:1x3x32x32", "--optShapes=image:4x3x32x32", "--maxShapes=image:16x3x32x32",
        "--fp16", "--int8", "--memPoolSize=workspace:512M", "--timingCacheFile=timing.cache", "--skipInference",
    ]


def test_trtexec_command_for_a_static_fp32_engine_has_no_shape_flags():
    cmd = trtexec_command("m.onnx", "m.engine", EngineSettings("image", 64, static_batch=1))
    assert not any(c.startswith(("--minShapes", "--optShapes", "--maxShapes", "--fp16", "--int8")) for c in cmd)
    assert "--memPoolSize=workspace:1024M" in cmd


@pytest.fixture()
def bundle(tmp_path):
    (tmp_path / "student.onnx").write_bytes(b"onnx bytes stand-in: the script only passes the name on")
    settings = EngineSettings("image", 32, fp16=True, min_batch=2, opt_batch=8, max_batch=64)
    script = write_build_script(tmp_path, "student.onnx", "student.fp16.engine", settings,
                                extra_metadata={"onnx_sha256": "abc"})
    return tmp_path, script, settings


def test_build_script_holds_the_exact_command(bundle):
    folder, script, settings = bundle
    assert script == folder / "build_engine.sh"
    assert script.stat().st_mode & stat.S_IXUSR
    text = script.read_text()
    expected = " ".join(trtexec_command("student.onnx", "student.fp16.engine", settings)[1:])
    assert '"$TRTEXEC" ' + expected in text
    assert "/usr/src/tensorrt/bin/trtexec" in text  # where JetPack puts trtexec (not on PATH)
    if BASH:
        subprocess.run([BASH, "-n", str(script)], check=True)  # valid shell syntax


@pytest.mark.skipif(BASH is None, reason="bash is needed to run build_engine.sh")
def test_build_script_runs_trtexec_and_writes_engine_metadata(bundle, tmp_path_factory):
    """Runs the script with TRTEXEC pointing at a recorder, to check the arguments it passes and the
    metadata it writes after a successful build. This checks the script's plumbing only; TensorRT
    itself is exercised by test_real_engine_build_and_parity where it is installed."""
    folder, script, settings = bundle
    tools = tmp_path_factory.mktemp("tools")
    recorder = tools / "trtexec"
    recorder.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, pathlib, sys
        pathlib.Path("args.json").write_text(json.dumps(sys.argv[1:]))
        engine = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--saveEngine=")][0]
        pathlib.Path(engine).write_bytes(b"engine")
        """))
    recorder.chmod(0o755)
    result = subprocess.run([BASH, str(script)], env={**os.environ, "TRTEXEC": str(recorder)},
                            capture_output=True, text=True, cwd=tools)
    assert result.returncode == 0, result.stderr
    args = json.loads((folder / "args.json").read_text())  # the script cds into its own folder
    assert args == trtexec_command("student.onnx", "student.fp16.engine", settings)[1:]
    meta = json.loads(engine_metadata_path(folder / "student.fp16.engine").read_text())
    assert meta["precision"] == "fp16" and meta["profile"]["max"] == [64, 3, 32, 32]
    assert meta["onnx"] == "student.onnx" and meta["onnx_sha256"] == "abc"

    missing = subprocess.run([BASH, str(script)], env={**os.environ, "TRTEXEC": str(tools / "nope")},
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "trtexec not found" in missing.stderr


def _has_tensorrt_gpu() -> bool:
    return tensorrt_available() and torch.cuda.is_available()


@pytest.mark.skipif(not _has_tensorrt_gpu(), reason="needs the tensorrt package and a CUDA GPU (not installable "
                                                    "on the CPU CI machines; run on a GPU host or Jetson)")
@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [False, True])
def test_real_engine_build_and_parity(tmp_path, fp16):
    from augkd_edge.export.onnx import export_onnx, with_normalisation
    from augkd_edge.export.parity import compare_runners
    from augkd_edge.export.runtimes import OrtRunner, TrtRunner
    from augkd_edge.export.tensorrt import build_engine

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    info = export_onnx(with_normalisation(model, (0.5,) * 3, (0.25,) * 3), tmp_path / "m.onnx", 32, opset=17)
    settings = EngineSettings("image", 32, fp16=fp16, min_batch=1, opt_batch=4, max_batch=8)
    meta = build_engine(info.path, tmp_path / "m.engine", settings)
    assert meta["precision"] == ("fp16" if fp16 else "fp32") and (tmp_path / "timing.cache").is_file()
    x = np.random.default_rng(0).random((13, 3, 32, 32), dtype=np.float32)
    with OrtRunner(info.path) as ref, TrtRunner(tmp_path / "m.engine") as engine:
        assert engine.precision == meta["precision"]
        report = compare_runners(ref, engine, x, atol=5e-2 if fp16 else 1e-2, min_agreement=0.9, batch_size=8)
        engine.prepare(x[:8])
        engine.run()
    assert report.passed, report.summary()
    again = build_engine(info.path, tmp_path / "m2.engine", settings)  # reuses the timing cache
    assert again["timing_cache"] == "timing.cache"
