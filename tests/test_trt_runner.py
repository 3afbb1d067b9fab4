"""The torch-free Jetson runner (export/trt_runner.py).

What runs here: argument handling, the measurement loop, statistics and the
report, with the TensorRT/CUDA layer replaced by a fake of the runner's small
``Engine`` interface (allowed for pure logic); and importing and running the
runner in a fresh virtual environment that has numpy but no torch, both as the
installed package layout and as loose files copied to a board.

What does NOT run here (no GPU, no TensorRT on this machine and in CI):
``EngineRunner``, ``PyCuda``, ``CudaPython`` and the CUDA-event clock.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from augkd_edge.export import bench_report, trt_runner

REPO = Path(__file__).resolve().parents[1]
RUNNER_FILES = trt_runner.BOARD_FILES

# The fake is plain Python text so the torch-free venv can run exactly the same one.
FAKE_ENGINE = textwrap.dedent('''
    import numpy as np

    class FakeClock:
        """Hands out a known latency sequence (ms), so the report's statistics are known."""
        name = "fake-clock"
        def __init__(self, samples):
            self.samples, self.i = list(samples), 0
        def time_ms(self, fn):
            fn()
            value = self.samples[self.i % len(self.samples)]
            self.i += 1
            return value

    class FakeEngine:
        """The runner's Engine interface without a GPU: logits = mean pixel per channel picks the class."""
        name, device, precision, input_size = "trt", "cuda", "fp16", 8
        def __init__(self, samples, max_batch=64):
            self.samples, self.max_batch = samples, max_batch
            self.runs = self.closed = 0
            self.x = None
        def infer(self, x):
            return x.mean(axis=(2, 3))
        def prepare(self, x):
            if len(x) > self.max_batch:
                raise ValueError(f"batch {len(x)} is outside the profile (max {self.max_batch})")
            self.x = x
        def run(self):
            assert self.x is not None
            self.runs += 1
        def close(self):
            self.closed += 1
        def clock(self, timing):
            return FakeClock(self.samples)
        def memory(self):
            return None
        def device_info(self):
            return {"name": "Fake Orin", "driver": "CUDA 12.6", "compute_capability": "8.7",
                    "memory_total_mb": 7620.0}
        def info(self):
            return {"cuda_binding": "fake"}
''')
_fake: dict = {}
exec(FAKE_ENGINE, _fake)
FakeEngine = _fake["FakeEngine"]


@pytest.fixture
def engine_file(tmp_path: Path) -> Path:
    path = tmp_path / "student.engine"
    path.write_bytes(b"not a real engine: the fake opener never reads it")
    return path


def test_main_writes_schema_report_with_known_statistics(tmp_path: Path, engine_file: Path) -> None:
    engine = FakeEngine([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    out = tmp_path / "report-orin"
    code = trt_runner.main([str(engine_file), "--batch", "8,1", "--warmup", "2", "--iters", "10",
                            "--label", "orin-nano", "--out", str(out)], opener=lambda args: engine)
    assert code == 0
    report = bench_report.load_report(out / "report.json")
    assert report["schema"] == bench_report.SCHEMA and report["tool"]["name"] == "trt_runner"
    assert report["environment"]["label"] == "orin-nano"
    assert report["environment"]["gpus"][0]["compute_capability"] == "8.7"
    assert [r["batch"] for r in report["results"]] == [1, 8]
    row = report["results"][1]
    assert row["precision"] == "fp16" and row["timing"] == "fake-clock" and row["samples"] == 10
    assert row["input_shape"] == [8, 3, 8, 8] and row["cuda_binding"] == "fake"
    assert row["latency_ms"]["median"] == pytest.approx(5.5)
    assert row["latency_ms"]["p90"] == pytest.approx(9.1)
    assert row["throughput_ips"] == pytest.approx(8 * 1000 / 5.5)
    assert engine.runs == 2 * (2 + 10) and engine.closed == 1
    assert (out / "report.md").is_file() and "data:image/png;base64," in (out / "report.html").read_text()


def test_failed_batch_is_reported_and_eval_npz_gives_top1(tmp_path: Path, engine_file: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.random((20, 3, 8, 8), dtype=np.float32)
    labels = images.mean(axis=(2, 3)).argmax(axis=1)
    labels[:5] = (labels[:5] + 1) % 3  # 5 of 20 wrong -> top-1 0.75
    npz = tmp_path / "split.npz"
    np.savez(npz, images=images, labels=labels)
    engine = FakeEngine([2.0], max_batch=8)
    out = tmp_path / "r"
    code = trt_runner.main([str(engine_file), "--batch", "4,16", "--iters", "3", "--eval-npz", str(npz),
                            "--out", str(out)], opener=lambda args: engine)
    assert code == 0
    ok, failed = bench_report.load_report(out)["results"]
    assert ok["top1"] == pytest.approx(0.75) and ok["eval"] == {"split": "split", "n": 20}
    assert "outside the profile" in failed["error"] and "latency_ms" not in failed
    assert "Failed cells" in (out / "report.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--batch", "1,x"], "comma-separated integers"),
    (["--batch", "0"], "comma-separated integers"),
    (["--iters", "5", "--seconds", "1"], "not allowed with argument"),
    (["--iters", "0"], "iters must be >= 1"),
    (["--warmup", "-1"], "warmup must be >= 0"),
])
def test_bad_arguments_exit_2_with_a_message(engine_file: Path, tmp_path: Path, capsys, argv, message) -> None:
    with pytest.raises(SystemExit) as exc:
        trt_runner.parse_args([str(engine_file), "--out", str(tmp_path), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_engine_file_is_named(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        trt_runner.parse_args([str(tmp_path / "nope.engine"), "--out", str(tmp_path)])
    assert "nope.engine: no such engine file" in capsys.readouterr().err


def test_eval_npz_without_labels_is_refused(engine_file: Path, tmp_path: Path, capsys) -> None:
    npz = tmp_path / "split.npz"
    np.savez(npz, images=np.zeros((2, 3, 8, 8), np.float32))
    code = trt_runner.main([str(engine_file), "--eval-npz", str(npz), "--out", str(tmp_path / "o")],
                           opener=lambda args: FakeEngine([1.0]))
    assert code == 2 and "split.npz: needs arrays 'images'" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_real_opener_without_tensorrt_says_what_to_install(engine_file: Path, tmp_path: Path, capsys) -> None:
    code = trt_runner.main([str(engine_file), "--out", str(tmp_path / "o")])
    assert code == 2 and "TensorRT's Python bindings are not importable" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _cuda_python_without_gpu() -> bool:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return False
    err, count = cudart.cudaGetDeviceCount()
    return err != cudart.cudaError_t.cudaSuccess or count == 0


@pytest.mark.skipif(not _cuda_python_without_gpu(), reason="needs cuda-python installed and no usable GPU")
def test_real_cuda_python_binding_reports_a_missing_gpu() -> None:
    """The real cuda-python path up to its first CUDA call (all that can run without a GPU)."""
    with pytest.raises(trt_runner.EngineError, match="cuda-python is installed but CUDA is unusable") as exc:
        trt_runner.load_binding("cuda-python")
    assert "CUDA runtime error cudaError" in str(exc.value)


def test_seconds_budget_is_used(engine_file: Path, tmp_path: Path) -> None:
    args = trt_runner.parse_args([str(engine_file), "--seconds", "0.5", "--out", str(tmp_path)])
    assert args.budget.seconds == 0.5 and args.budget.iters is None and args.batches == [1, 8, 32]


# -- torch-free: a fresh venv with numpy and without torch -----------------------------------

@pytest.fixture(scope="module")
def torchless_python(tmp_path_factory) -> Path:
    """A venv from the base interpreter with only numpy linked in (no pip, no network)."""
    root = tmp_path_factory.mktemp("torchless")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    numpy_dir = Path(np.__file__).parent
    for item in numpy_dir.parent.iterdir():
        if item.name == "numpy" or item.name.startswith(("numpy.libs", "numpy-")):
            os.symlink(item, site / item.name)
    probe = subprocess.run([python, "-c", "import numpy, importlib.util as u; "
                            "assert u.find_spec('torch') is None; print(numpy.__version__)"],
                           capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    return python


def _installed_layout(dest: Path) -> Path:
    """augkd_edge/ with export/ as augkd_edge/export/, as pip installs them (pyproject package-dir)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "augkd_edge", dest / "augkd_edge", ignore=ignore)
    shutil.copytree(REPO / "export", dest / "augkd_edge" / "export", ignore=ignore)
    return dest


def _run(python: Path, args: list[str], cwd: Path, env_path: Path | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(cwd)}
    if env_path is not None:
        env["PYTHONPATH"] = str(env_path)
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_module_help_works_without_torch(torchless_python: Path, tmp_path: Path) -> None:
    pkg = _installed_layout(tmp_path / "site")
    result = _run(torchless_python, ["-m", "augkd_edge.export.trt_runner", "--help"], tmp_path, pkg)
    assert result.returncode == 0, result.stderr
    assert "--batch" in result.stdout and "--timing" in result.stdout


def test_loose_copy_runs_a_report_without_torch(torchless_python: Path, tmp_path: Path) -> None:
    """The board recipe of docs/jetson.md: the runner's files in one folder, plus (here) the fake engine."""
    board = tmp_path / "board"
    board.mkdir()
    for name in RUNNER_FILES:
        shutil.copy(REPO / "export" / name, board / name)
    help_result = _run(torchless_python, ["trt_runner.py", "--help"], board)
    assert help_result.returncode == 0, help_result.stderr
    (board / "student.engine").write_bytes(b"fake")
    real = _run(torchless_python, ["trt_runner.py", "student.engine", "--out", "real"], board)
    assert real.returncode == 2 and "TensorRT's Python bindings are not importable" in real.stderr
    (board / "fake_engine.py").write_text(FAKE_ENGINE)
    (board / "drive.py").write_text(textwrap.dedent('''
        import sys
        import trt_runner
        from fake_engine import FakeEngine
        code = trt_runner.main(["student.engine", "--batch", "1,4", "--iters", "5", "--warmup", "1",
                                "--out", "out"], opener=lambda args: FakeEngine([1.0, 3.0]))
        assert "torch" not in sys.modules, "the runner imported torch"
        sys.exit(code)
    '''))
    result = _run(torchless_python, ["drive.py"], board)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((board / "out" / "report.json").read_text())
    assert report["kind"] == "augkd-edge/bench" and len(report["results"]) == 2
    assert report["results"][0]["latency_ms"]["median"] == pytest.approx(1.0)
    assert "numpy" in report["environment"]["libraries"] and "torch" not in report["environment"]["libraries"]
    html = (board / "out" / "report.html").read_text()
    assert "No plots: matplotlib is not installed" in html  # the board fallback, honestly stated
