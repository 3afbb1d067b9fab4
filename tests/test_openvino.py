"""OpenVINO (issue 22, first part): ONNX -> IR FP32 / FP16 with parity against PyTorch, the runner behind the one
runner interface, bench rows in the report schema, bad device and missing-extra messages. Real OpenVINO on the
CPU; it is in the test extra."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="OpenVINO is the optional extra augkd-edge[openvino]; the test extra has it")
from click.testing import CliRunner  # noqa: E402

from augkd_edge.cli import main  # noqa: E402
from augkd_edge.errors import UserError  # noqa: E402
from augkd_edge.export.onnx import export_onnx  # noqa: E402
from augkd_edge.export.openvino import OpenVinoRunner, convert_to_ir, import_openvino, ir_input_size  # noqa: E402
from augkd_edge.export.runtimes import Runner, TorchRunner, open_runner  # noqa: E402
from test_export_runtimes import TinyNet  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyNet().eval()
    folder = tmp_path_factory.mktemp("ov")
    export_onnx(model, folder / "tiny.onnx", 16, opset=17)
    return model, folder


@pytest.mark.parametrize("precision,atol", [("fp32", 1e-5), ("fp16", 2e-3)])
def test_ir_matches_pytorch(tiny, precision: str, atol: float) -> None:
    model, folder = tiny
    xml = convert_to_ir(folder / "tiny.onnx", folder / f"tiny.{precision}.xml", precision)
    assert xml.with_suffix(".bin").is_file() and ir_input_size(xml) == 16
    x = np.random.default_rng(0).random((5, 3, 16, 16), dtype=np.float32)
    with TorchRunner(model) as ref, open_runner(xml, threads=1) as runner:
        assert isinstance(runner, Runner)
        assert (runner.name, runner.device, runner.precision) == ("openvino", "cpu", precision)
        expected, got = ref.infer(x), runner.infer(x)
        assert got.dtype == np.float32 and got.shape == (5, 4)
        np.testing.assert_allclose(got, expected, atol=atol)
        assert (got.argmax(1) == expected.argmax(1)).all()
        runner.prepare(x[:1])  # what the latency loop times; a dynamic batch takes any size
        runner.run()
    if precision == "fp16":  # compressed weights: about half the file
        assert xml.with_suffix(".bin").stat().st_size < 0.6 * (folder / "tiny.fp32.bin").stat().st_size


def test_timed_path_runs_a_copy_compiled_for_the_staged_shape(tiny) -> None:
    _, folder = tiny
    xml = convert_to_ir(folder / "tiny.onnx", folder / "tiny.static.xml")
    x = np.random.default_rng(1).random((3, 3, 16, 16), dtype=np.float32)
    with OpenVinoRunner(xml, threads=1) as runner, OpenVinoRunner(xml, threads=1, static_shape=False) as dynamic:
        assert not runner.model.input(0).get_partial_shape().is_static  # the IR keeps its dynamic batch
        runner.prepare(x)
        runner.run()
        timed = runner._timed.get_output_tensor(0).data
        assert runner._timed.get_compiled_model().input(0).get_partial_shape().is_static
        assert not dynamic.compiled.input(0).get_partial_shape().is_static
        np.testing.assert_allclose(timed, runner.infer(x), atol=1e-5)  # same model, fixed shape
        assert runner.infer(x[:2]).shape == (2, 4)  # infer still takes any batch
        dynamic.prepare(x)
        dynamic.run()
        assert not dynamic._timed.get_compiled_model().input(0).get_partial_shape().is_static
        np.testing.assert_allclose(dynamic._timed.get_output_tensor(0).data, timed, atol=1e-5)


def test_bad_device_hint_and_files_are_refused(tiny, tmp_path: Path) -> None:
    _, folder = tiny
    xml = convert_to_ir(folder / "tiny.onnx", tmp_path / "t.xml")
    with pytest.raises(UserError, match=r"device 'NPU' is not present here \(available: CPU"):
        OpenVinoRunner(xml, device="NPU")
    with pytest.raises(UserError, match="performance hint 'FAST'"):
        OpenVinoRunner(xml, hint="FAST")
    xml.with_suffix(".bin").unlink()
    with pytest.raises(UserError, match="needs the .xml and its .bin"):
        OpenVinoRunner(xml)
    with pytest.raises(UserError, match="ONNX file not found"):
        convert_to_ir(tmp_path / "none.onnx", tmp_path / "n.xml")
    with pytest.raises(UserError, match="precision 'int4'"):
        convert_to_ir(folder / "tiny.onnx", tmp_path / "n.xml", "int4")


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from augkd_edge.export.openvino_export import quantize_nncf

    monkeypatch.setitem(sys.modules, "nncf", None)  # without NNCF the QDQ candidate is the only INT8 IR
    assert quantize_nncf(tmp_path / "a.xml", tmp_path / "b.xml", np.zeros((1, 3, 8, 8), np.float32)) is None
    monkeypatch.setitem(sys.modules, "openvino", None)  # what Python does when the package is absent
    with pytest.raises(UserError, match=r"augkd-edge\[openvino\]"):
        import_openvino()


def test_bench_measures_the_ir_beside_onnx_runtime(tiny, tmp_path: Path) -> None:
    _, folder = tiny
    xml = convert_to_ir(folder / "tiny.onnx", tmp_path / "tiny.xml")
    res = CliRunner().invoke(main, ["bench", "run", str(folder / "tiny.onnx"), str(xml), "--batch", "1,4",
                                    "--iters", "3", "--warmup", "1", "--threads", "1", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "b" / "report.json").read_text())["results"]
    cells = {(r["backend"], r["batch"]) for r in rows}
    assert cells == {("ort", 1), ("ort", 4), ("openvino", 1), ("openvino", 4)}
    ov_rows = [r for r in rows if r["backend"] == "openvino"]
    assert all(r["latency_ms"]["median"] > 0 and r["precision"] == "fp32" for r in ov_rows)
    bad = CliRunner().invoke(main, ["bench", "run", str(xml), "--ov-device", "GPU.7", "--iters", "1",
                                    "--out", str(tmp_path / "c")])
    assert bad.exit_code != 0 and "is not present here" in bad.output and "Traceback" not in bad.output


def test_export_writes_checked_ir_beside_onnx(tmp_path: Path) -> None:
    from test_hostile import TINY, cli, export_archive, image_folder, tiny_net

    data = image_folder(tmp_path / "data")
    teacher = export_archive(tmp_path / "two.pt2", model=tiny_net(2))
    run = tmp_path / "run"
    res = cli("distill", "--teacher", teacher, "--target", data, "--method", "no-kd", *TINY, "--out", run)
    assert res.exit_code == 0, res.output
    res = cli("export", run, "--onnx", "--openvino", "--int8", "--calibration-size", "4", "--max-drop", "100",
              "--threads", "1", "--out", tmp_path / "exp")
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "exp" / "export.json").read_text())
    int8 = record["openvino"]["int8"]  # QDQ read by OpenVINO and NNCF's, both under export's gate; the faster kept
    assert set(int8["candidates"]) == {"qdq", "nncf"} and int8["chosen"] in int8["candidates"] and int8["accepted"]
    for candidate in int8["candidates"].values():
        assert candidate["made"] and candidate["batch1_median_ms_here"] > 0
        assert candidate["drop_points"] == pytest.approx(100 * (record["int8"]["fp32_top1"] - candidate["int8_top1"]))
    assert sorted(p.name for p in (tmp_path / "exp").glob("*.xml")) == [
        "student.fp16.xml", "student.fp32.xml", "student.int8.xml"]
    from augkd_edge.export.openvino import ir_precision
    assert ir_precision(tmp_path / "exp" / "student.int8.xml") == "int8"
    assert record["version"] == 2 and record["tools"]["openvino"]
    for precision in ("fp32", "fp16"):
        entry = record["openvino"][precision]
        assert entry["parity"]["passed"] and entry["parity"]["top1_agreement"] == 1.0
        assert record["files"][f"student.{precision}.bin"]["precision"] == precision
    fp32 = record["openvino"]["fp32"]["parity"]
    assert fp32["max_abs_diff"] <= fp32["tolerance"]  # the ONNX tolerances, not decisions only
    bench = cli("bench", "run", tmp_path / "exp" / "student.onnx", tmp_path / "exp" / "student.fp32.xml",
                "--iters", "2", "--batch", "1", "--eval", run, "--out", tmp_path / "bench")
    assert bench.exit_code == 0, bench.output
    rows = json.loads((tmp_path / "bench" / "report.json").read_text())["results"]
    assert {r["backend"] for r in rows} == {"ort", "openvino"} and len({r["top1"] for r in rows}) == 1


class BrightestChannel(torch.nn.Module):
    """Class = the brightest colour channel: decisions that follow the input, so quantization errors show."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.head = torch.nn.Linear(3, 3)
        with torch.no_grad():
            for layer in (self.conv, self.head):
                layer.weight.copy_(torch.eye(3).reshape(layer.weight.shape))
                layer.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_int8_ir_from_a_broken_calibration_fails_the_gate(tmp_path: Path) -> None:
    """Calibrated on near-black constant images (what a broken data pipeline gives), the INT8 model clips every
    input to one value and loses the decisions; calibrated on real-looking images it keeps them. The gate, run on
    OpenVINO's INT8 IR, tells the two apart."""
    from augkd_edge.export.quantize import int8_gate, quantize_int8

    model = BrightestChannel().eval()
    export_onnx(model, tmp_path / "b.onnx", 16, opset=17)
    rng = np.random.default_rng(1)

    def images(n: int) -> np.ndarray:
        return rng.random((n, 3, 16, 16), dtype=np.float32) * rng.random((n, 3, 1, 1), dtype=np.float32)

    x = images(90)
    with TorchRunner(model) as ref:
        labels = ref.infer(x).argmax(1)  # FP32's decisions as the labels: FP32 top-1 is 1.0
    assert len(set(labels.tolist())) == 3
    accuracy = {}
    for name, calib in (("good", images(32)), ("constant", np.full((32, 3, 16, 16), 0.01, dtype=np.float32))):
        qdq = quantize_int8(tmp_path / "b.onnx", tmp_path / f"{name}.int8.onnx", calib)
        with OpenVinoRunner(convert_to_ir(qdq, tmp_path / f"{name}.xml"), threads=1) as runner:
            assert runner.precision == "int8"
            accuracy[name] = float((runner.infer(x).argmax(1) == labels).mean())
    assert accuracy["good"] >= 0.95 and int8_gate(1.0, accuracy["good"], 10.0, force=False)["accepted"], accuracy
    rejected = int8_gate(1.0, accuracy["constant"], 10.0, force=False)
    assert not rejected["accepted"] and rejected["drop_points"] > 10, accuracy
