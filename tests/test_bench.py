"""`augkd-edge bench`: statistics against hand-computed samples, the measurement
loop and grid, the report schema and renderings, compare, and the command end to
end on a real mobilenet_v3_small student (torch, FP32 ONNX, INT8 QDQ ONNX on CPU).

Not run here: --device cuda, CUDA graphs and the TensorRT backend (no GPU).
"""

from __future__ import annotations

import base64
import json
import mmap
import platform
import re
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from augkd_edge.cli import main
from augkd_edge.errors import UserError
from augkd_edge.export import bench_compare, bench_render, bench_report, envinfo, latency

# -- statistics -----------------------------------------------------------------------------


def test_summarize_one_to_ten() -> None:
    stats = latency.summarize([float(v) for v in range(10, 0, -1)], batch=4)
    lat = stats["latency_ms"]
    assert stats["samples"] == 10
    assert lat["min"] == 1 and lat["max"] == 10 and lat["mean"] == pytest.approx(5.5)
    assert lat["median"] == pytest.approx(5.5)
    # linear interpolation: position q/100 * (n - 1) in the sorted sample
    assert lat["p90"] == pytest.approx(9.1) and lat["p95"] == pytest.approx(9.55)
    assert lat["p99"] == pytest.approx(9.91)
    assert lat["std"] == pytest.approx(3.0276503540974917)  # sqrt(82.5 / 9), ddof = 1
    assert stats["throughput_ips"] == pytest.approx(4 * 1000 / 5.5)


def test_summarize_uneven_sample() -> None:
    lat = latency.summarize([3, 1, 4, 1, 5, 9, 2, 6], batch=1)["latency_ms"]
    # sorted 1 1 2 3 4 5 6 9: p90 at 6.3 -> 6 + 0.3 * 3, p95 at 6.65, p99 at 6.93
    assert lat["median"] == pytest.approx(3.5)
    assert lat["p90"] == pytest.approx(6.9) and lat["p95"] == pytest.approx(7.95)
    assert lat["p99"] == pytest.approx(8.79)
    assert lat["mean"] == pytest.approx(3.875) and lat["std"] == pytest.approx((52.875 / 7) ** 0.5)


def test_summarize_single_sample_and_bad_input() -> None:
    lat = latency.summarize([7.0], batch=2)["latency_ms"]
    assert lat["std"] == 0.0 and lat["p99"] == 7.0 and lat["median"] == 7.0
    with pytest.raises(ValueError):
        latency.summarize([], batch=1)
    with pytest.raises(ValueError):
        latency.summarize([1.0], batch=0)


# -- measurement loop and grid --------------------------------------------------------------

class CountingClock:
    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def time_ms(self, fn) -> float:
        fn()
        self.calls += 1
        return float(self.calls)


def test_measure_fixed_iterations_after_warmup() -> None:
    calls = []
    clock = CountingClock()
    samples = latency.measure(lambda: calls.append(1), latency.Budget(warmup=3, iters=5), clock)
    assert samples == [1.0, 2.0, 3.0, 4.0, 5.0] and len(calls) == 8 and clock.calls == 5


def test_measure_time_budget_takes_at_least_the_minimum() -> None:
    samples = latency.measure(lambda: None, latency.Budget(warmup=0, iters=None, seconds=1e-6))
    assert len(samples) >= latency.MIN_BUDGET_ITERS and all(s >= 0 for s in samples)


@pytest.mark.parametrize("kwargs", [dict(iters=None), dict(iters=5, seconds=1.0), dict(iters=0),
                                    dict(warmup=-1), dict(iters=None, seconds=0.0)])
def test_budget_refuses_bad_settings(kwargs) -> None:
    with pytest.raises(ValueError):
        latency.Budget(**kwargs)


class FakeRunner:
    """Runner interface over numpy: logits are the per-channel means (3 classes)."""

    def __init__(self, max_batch: int = 1000) -> None:
        self.max_batch, self.closed, self.infers = max_batch, 0, 0

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.infers += 1
        return x.mean(axis=(2, 3))

    def prepare(self, x: np.ndarray) -> None:
        if len(x) > self.max_batch:
            raise ValueError(f"batch {len(x)} exceeds {self.max_batch}")

    def run(self) -> None:
        pass

    def close(self) -> None:
        self.closed += 1


def test_top1_pads_the_last_chunk_for_static_batch_engines() -> None:
    x = np.zeros((5, 3, 2, 2), np.float32)
    x[np.arange(5), [0, 1, 2, 0, 1]] = 1.0
    sizes: list[int] = []

    def infer(chunk: np.ndarray) -> np.ndarray:
        sizes.append(len(chunk))
        return chunk.mean(axis=(2, 3))

    assert latency.top1(infer, x, np.array([0, 1, 2, 2, 2]), batch=2) == pytest.approx(0.6)
    assert sizes == [2, 2, 2]  # 5 images: the last chunk of 1 is padded to 2


def test_failed_eval_keeps_the_latency() -> None:
    class NoInfer(FakeRunner):
        def infer(self, x: np.ndarray) -> np.ndarray:
            raise RuntimeError("output binding lost")

    split = latency.EvalSplit("test", np.zeros((2, 3, 4, 4), np.float32), np.array([0, 1]))
    (row,) = latency.run_grid([latency.Target("m.onnx", "ort", "cpu", "fp32", 4, NoInfer)], [2],
                              latency.Budget(warmup=0, iters=2), eval_split=split)
    assert "error" not in row and row["samples"] == 2
    assert row["eval_error"] == "RuntimeError: output binding lost" and "top1" not in row


def test_run_grid_reports_failures_evaluates_once_and_closes() -> None:
    good, small = FakeRunner(), FakeRunner(max_batch=4)
    split = latency.EvalSplit("test", np.eye(3, dtype=np.float32)[:, :, None, None].repeat(4, 2).repeat(4, 3),
                              np.array([0, 1, 1]))

    def broken():
        raise RuntimeError("engine built for another GPU")

    targets = [latency.Target("a.onnx", "ort", "cpu", "fp32", 4, lambda: good),
               latency.Target("b.engine", "trt", "cuda", "fp16", 4, lambda: small),
               latency.Target("c.engine", "trt", "cuda", "int8", 4, broken)]
    errors: list[str] = []
    rows = latency.run_grid(targets, [1, 8], latency.Budget(warmup=1, iters=3), eval_split=split,
                            on_error=errors.append)
    assert [(r["model"], r["batch"], "error" in r) for r in rows] == [
        ("a.onnx", 1, False), ("a.onnx", 8, False), ("b.engine", 1, False), ("b.engine", 8, True),
        ("c.engine", 1, True), ("c.engine", 8, True)]
    assert rows[0]["top1"] == pytest.approx(2 / 3) and rows[1]["top1"] == rows[0]["top1"]
    assert good.infers == 3 and good.closed == 1 and small.closed == 1  # eval once (3 images at batch 1)
    assert "exceeds 4" in rows[3]["error"] and "another GPU" in rows[4]["error"] and len(errors) == 3
    assert rows[0]["input_shape"] == [1, 3, 4, 4] and rows[0]["timing"] == "host-sync"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM reset is Linux-only")
def test_host_peak_memory_sees_an_allocation_and_resets() -> None:
    mem = latency.HostMemory()
    assert mem.peak_kind == "vmhwm"
    mem.reset()
    before = mem.peak_mb()
    # 96 MiB of fresh pages from an anonymous mapping, touched: np.ones may be served from heap memory that an
    # earlier test freed but malloc kept resident, and then RSS does not grow (CI failed so, 1765 MB -> 1765 MB)
    block = mmap.mmap(-1, 96 * 2**20)
    np.frombuffer(block, dtype=np.uint8)[:] = 1
    block.close()
    grown = mem.peak_mb()
    mem.reset()
    assert grown - before > 80
    assert mem.peak_mb() < grown - 80  # the freed block is no longer the peak


def test_environment_has_no_hostname(monkeypatch) -> None:
    sentinel = "secret-host-4711"
    real = platform.uname()
    monkeypatch.setattr(platform, "uname", lambda: real._replace(node=sentinel))
    monkeypatch.setattr(platform, "node", lambda: sentinel)
    monkeypatch.setattr(socket, "gethostname", lambda: sentinel)
    env = envinfo.capture(label="ws", threads={"torch_threads": 2})
    text = json.dumps(env)
    assert sentinel not in text
    assert env["label"] == "ws" and env["cpu"]["logical_cores"] >= 1 and env["threads"]["torch_threads"] == 2
    assert env["libraries"]["numpy"] == np.__version__


# -- report and compare ---------------------------------------------------------------------

def _report(label: str, medians: dict[tuple[str, int], float]) -> dict:
    rows = []
    for (backend, batch), median in medians.items():
        rows.append({"model": f"/some/dir/{label}/student.onnx", "backend": backend, "device": "cpu",
                     "precision": "fp32", "batch": batch, "input_shape": [batch, 3, 32, 32],
                     **latency.summarize([median] * 5, batch), "timing": "host-sync",
                     "memory_mb": {"host_peak_rss": 100.0, "device_peak": None}})
    env = {"label": label, "cpu": {"model": "Test CPU"}, "gpus": [], "libraries": {}, "threads": {}}
    return bench_report.build_report(rows, env, {"warmup": 1, "iters": 5, "seconds": None}, "test", "0")


def test_report_files_and_embedded_plots(tmp_path: Path) -> None:
    report = _report("ws", {("ort", 1): 2.0, ("ort", 8): 4.0, ("torch", 1): 3.0})
    report["results"].append({"model": "x.engine", "backend": "trt", "device": "cuda", "precision": "fp16",
                              "batch": 1, "error": "RuntimeError: no GPU"})
    paths = bench_render.write_report(report, tmp_path)
    assert [p.name for p in paths] == ["report.json", "report.md", "report.html"]
    loaded = bench_report.load_report(tmp_path)
    assert loaded["schema"] == 1 and loaded["settings"]["percentile_method"] == "linear"
    md = (tmp_path / "report.md").read_text()
    assert md.count("| /some/dir/ws/student.onnx |") == 3 and "x.engine trt/cuda/fp16 batch 1: RuntimeError" in md
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', (tmp_path / "report.html").read_text())
    assert len(pngs) == 2 and all(base64.b64decode(p).startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)


@pytest.mark.parametrize("text, message", [
    ("{", "not valid JSON"),
    ('{"kind": "other"}', "not an augkd-edge latency report"),
    ('{"kind": "augkd-edge/bench", "schema": 99, "results": []}', "newer than this reader"),
    ('{"kind": "augkd-edge/bench", "schema": 1, "results": [{"model": "m"}]}', "lacks backend"),
])
def test_bad_reports_are_user_errors_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "report.json"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as exc:
        bench_report.load_report(path)
    assert str(path) in str(exc.value)


def test_compare_speedups_against_the_baseline() -> None:
    a = _report("old", {("ort", 1): 4.0, ("ort", 8): 8.0})
    b = _report("new", {("ort", 1): 2.0, ("torch", 1): 1.0})
    cmp = bench_compare.compare([a, b], ["old", "new"], baseline=0)
    rows = {(r["backend"], r["batch"]): r["reports"] for r in cmp["rows"]}
    assert rows[("ort", 1)][0]["speedup"] == pytest.approx(1.0)
    assert rows[("ort", 1)][1]["speedup"] == pytest.approx(2.0)  # 4 ms -> 2 ms
    assert rows[("ort", 8)][1] is None and rows[("torch", 1)][0] is None
    assert rows[("torch", 1)][1]["speedup"] is None  # nothing to compare with
    assert all(r["model"] == "student.onnx" for r in cmp["rows"])  # matched by file name across machines
    with pytest.raises(UserError, match="out of range"):
        bench_compare.compare([a, b], ["old", "new"], baseline=2)


def test_compare_across_builds_matches_on_batch_only(tmp_path: Path) -> None:
    ws = _report("ws", {("ort", 1): 4.0, ("ort", 8): 8.0})
    board = _report("orin", {("trt", 1): 1.0, ("trt", 8): 2.0})
    default = bench_compare.compare([ws, board], ["ws", "orin"])
    assert not [r for r in default["rows"] if all(r["reports"])]  # ort and trt never line up by default
    cmp = bench_compare.compare([ws, board], ["ws", "orin"], match=[])
    assert [(r["batch"], r["reports"][1]["speedup"]) for r in cmp["rows"]] == [(1, 4.0), (8, 4.0)]
    assert cmp["rows"][0]["reports"][1]["config"] == "student.onnx trt cpu fp32"
    header, _ = bench_render.compare_table(cmp)
    assert header[:2] == ["batch", "ws config"]
    both = _report("ws2", {("ort", 1): 4.0, ("torch", 1): 9.0})
    with pytest.raises(UserError, match="two rows match the same entry"):
        bench_compare.compare([both, board], ["ws2", "orin"], match=[])
    with pytest.raises(UserError, match="--match colour: unknown field"):
        bench_compare.compare([ws, board], ["ws", "orin"], match=["colour"])
    bench_compare.write_comparison(cmp, [ws, board], tmp_path)
    assert "rows matched on batch" in (tmp_path / "compare.md").read_text()


# -- the command, end to end on a real student ------------------------------------------------

@pytest.fixture(scope="module")
def student(tmp_path_factory) -> dict[str, Path]:
    """mobilenet_v3_small with 10 classes: model file (with a recorded optdigits test split),
    FP32 ONNX and INT8 QDQ ONNX, made with the project's own export functions."""
    import torch

    from augkd_edge.export.onnx import export_onnx, with_normalisation
    from augkd_edge.export.quantize import quantize_int8
    from augkd_edge.models.loading import ModelMeta, save_model_file
    from augkd_edge.models.zoo import build_classifier

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("student")
    model = build_classifier("mobilenet_v3_small", 10).eval()
    meta = ModelMeta("mobilenet_v3_small", 10, [str(i) for i in range(10)], input_size=32,
                     extra={"data": "digits:optdigits", "splits": {"test": list(range(40))}})
    pt = save_model_file(root / "student.pt", model, meta)
    onnx_path = root / "student.onnx"
    # opset 17 takes the TorchScript exporter: ~1 s instead of ~25 s for torch.export on 2 cores;
    # the benchmark does not depend on which exporter wrote the graph.
    export_onnx(with_normalisation(model, meta.mean, meta.std), onnx_path, 32, opset=17)
    calib = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)
    int8 = quantize_int8(onnx_path, root / "student_int8.onnx", calib, batch_size=4)
    return {"pt": pt, "onnx": onnx_path, "int8": Path(int8)}


def _cli(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_bench_torch_and_ort_fp32_int8_then_compare(student, tmp_path: Path) -> None:
    out_a = tmp_path / "a"
    result = _cli(["bench", str(student["pt"]), str(student["onnx"]), str(student["int8"]),
                   "--backend", "torch,ort", "--batch", "1,8,32", "--warmup", "1", "--iters", "3",
                   "--threads", "1", "--eval", str(student["pt"]), "--label", "ci-cpu", "--out", str(out_a)])
    assert result.exit_code == 0, result.output
    for name in ("report.json", "report.md", "report.html"):
        assert (out_a / name).is_file()
    report = bench_report.load_report(out_a / "report.json")
    rows = report["results"]
    assert len(rows) == 9 and not [r for r in rows if "error" in r]
    assert {(r["model"], r["backend"], r["precision"]) for r in rows} == {
        ("student.pt", "torch", "fp32"), ("student.onnx", "ort", "fp32"), ("student_int8.onnx", "ort", "int8")}
    assert all(r["samples"] == 3 and r["latency_ms"]["min"] > 0 for r in rows)
    assert all(r["eval"] == {"split": "test", "n": 40} for r in rows)
    top1 = {r["model"]: r["top1"] for r in rows}
    assert abs(top1["student.pt"] - top1["student.onnx"]) <= 1 / 40  # same FP32 model, baked normalisation
    assert report["environment"]["threads"]["torch_threads"] == 1
    assert report["environment"]["label"] == "ci-cpu"
    assert "data:image/png;base64," in (out_a / "report.html").read_text()

    out_b = tmp_path / "b"
    result = _cli(["bench", "run", str(student["onnx"]), "--backend", "ort", "--batch", "1",
                   "--warmup", "0", "--seconds", "0.05", "--label", "other", "--out", str(out_b)])
    assert result.exit_code == 0, result.output
    (row,) = bench_report.load_report(out_b)["results"]
    assert row["samples"] >= latency.MIN_BUDGET_ITERS

    out_c = tmp_path / "c"
    result = _cli(["bench", "compare", str(out_a / "report.json"), str(out_b), "--baseline", "1",
                   "--match", "model,backend,device,precision,batch", "--out", str(out_c)])
    assert result.exit_code == 0, result.output
    cmp = json.loads((out_c / "compare.json").read_text())
    assert cmp["names"] == ["ci-cpu", "other"] and cmp["baseline"] == 1
    (shared,) = [r for r in cmp["rows"] if all(r["reports"])]
    assert (shared["model"], shared["batch"]) == ("student.onnx", 1)
    assert shared["reports"][1]["speedup"] == pytest.approx(1.0)
    assert "ci-cpu median ms" in (out_c / "compare.md").read_text()
    assert "data:image/png;base64," in (out_c / "compare.html").read_text()


@pytest.mark.parametrize("args, message", [
    (["--iters", "3", "--seconds", "1"], "exclude each other"),
    (["--backend", "ort,tpu"], "unknown"),
    (["--backend", "trt"], "no MODEL matches"),
    (["--batch", "1,a"], "comma-separated integers"),
    (["--cuda-graphs"], "need --device cuda"),
    (["--torch-precision", "fp16"], "need --device cuda"),
])
def test_bench_user_errors_exit_2(student, tmp_path: Path, args: list[str], message: str) -> None:
    result = _cli(["bench", str(student["onnx"]), *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and message in result.output


def test_compare_refuses_a_file_that_is_not_a_report(tmp_path: Path) -> None:
    bad = tmp_path / "notes.json"
    bad.write_text("[]")
    result = _cli(["bench", "compare", str(bad), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "notes.json: not an augkd-edge latency report" in result.output
