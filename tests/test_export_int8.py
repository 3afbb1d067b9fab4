"""INT8 QDQ quantization: TensorRT-shaped (symmetric, per-channel, float bias), every
calibration method, and accuracy close to FP32 on a model with a real decision margin."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from augkd_edge.errors import UserError
from augkd_edge.export.onnx import export_onnx, with_normalisation
from augkd_edge.export.latency import batched_logits
from augkd_edge.export.quantize import ImageCalibrationReader, quantize_int8
from augkd_edge.export.runtimes import OrtRunner
from augkd_edge.export.trt_ops import check_tensorrt_support

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class ColourNet(nn.Module):
    """Classifies which colour channel is brightest: trained in a second, with a clear margin."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


def _colour_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = rng.random((n, 3, 8, 8), dtype=np.float32) * 0.6
    images[np.arange(n), labels] += 0.4
    return images.astype(np.float32), labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    model = ColourNet()
    x, y = _colour_data(256, seed=1)
    wrapped = with_normalisation(model, MEAN, STD).train()
    opt = torch.optim.Adam(wrapped.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(wrapped(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    wrapped.eval()
    root = tmp_path_factory.mktemp("int8")
    info = export_onnx(wrapped, root / "fp32.onnx", 8, opset=17)
    return root, info.path, x


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_qdq_model_follows_tensorrt_rules_and_keeps_accuracy(trained):
    root, fp32, calib = trained
    int8 = quantize_int8(fp32, root / "minmax.onnx", calib, method="minmax", batch_size=50)
    model = onnx.load(str(int8))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 5
    assert not {"QLinearConv", "ConvInteger"} & set(ops)  # QDQ format, not QOperator
    inits = _initializers(model)
    dq_inputs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    for node in dq_inputs:  # symmetric: every zero point is 0; only int8 data is dequantized
        if len(node.input) > 2:
            assert not inits[node.input[2]].any(), node.name
        if node.input[0] in inits:
            assert inits[node.input[0]].dtype == np.int8, node.name
    per_channel = [inits[n.input[1]].size for n in dq_inputs if n.input[0] in inits and inits[n.input[1]].size > 1]
    assert 16 in per_channel  # conv weights carry one scale per output channel
    assert check_tensorrt_support(int8).ok

    test_x, test_y = _colour_data(300, seed=2)
    with OrtRunner(fp32) as f, OrtRunner(int8) as q:
        assert q.precision == "int8" and f.precision == "fp32"
        acc32 = (batched_logits(f.infer, test_x).argmax(1) == test_y).mean()
        acc8 = (batched_logits(q.infer, test_x).argmax(1) == test_y).mean()
    assert acc32 > 0.95
    assert acc32 - acc8 <= 0.01


def test_ort_cpu_form_has_uint8_asymmetric_activations_and_keeps_accuracy(trained):
    """--int8-for ort-cpu: the U8S8 form ONNX Runtime's CPU kernels run fast (the TensorRT form runs 4-8x slower
    there: benchmarks/results/int8-formats-cpu-2core)."""
    from augkd_edge.export.quantize import INT8_FORMATS

    root, fp32, calib = trained
    int8 = quantize_int8(fp32, root / "ortcpu.onnx", calib, method="minmax", batch_size=50, target="ort-cpu")
    model = onnx.load(str(int8))
    inits = _initializers(model)
    quant = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    activation_zero_points = [inits[n.input[2]] for n in quant if len(n.input) > 2]
    assert activation_zero_points and all(z.dtype == np.uint8 for z in activation_zero_points)
    assert any(z.any() for z in activation_zero_points)  # asymmetric: not every zero point is 0
    weights = [inits[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert weights and all(w.dtype == np.int8 for w in weights)
    assert max(int(np.abs(w).max()) for w in weights) <= 64  # reduce_range: 7-bit weights
    assert INT8_FORMATS["ort-cpu"].description["activations"].startswith("uint8")
    test_x, test_y = _colour_data(300, seed=2)
    with OrtRunner(fp32) as f, OrtRunner(int8) as q:
        assert q.precision == "int8"
        acc32 = (batched_logits(f.infer, test_x).argmax(1) == test_y).mean()
        acc8 = (batched_logits(q.infer, test_x).argmax(1) == test_y).mean()
    assert acc32 - acc8 <= 0.02
    with pytest.raises(UserError, match="--int8-for 'jetson'"):
        quantize_int8(fp32, root / "x.onnx", calib, target="jetson")


def test_int8_speed_here_and_bench_pairs(trained):
    from augkd_edge.export.speedup import fp32_name, int8_pairs, int8_speedup

    root, fp32, calib = trained
    int8 = quantize_int8(fp32, root / "speed.onnx", calib, batch_size=50, target="ort-cpu")
    with OrtRunner(fp32, threads=1) as f, OrtRunner(int8, threads=1) as q:
        speed = int8_speedup(f, q, calib[:3], batch=2, threads=1, rounds=3, calls=2, warmup=1)
    assert speed["batch"] == 2 and speed["fp32_median_ms"] > 0 and speed["int8_median_ms"] > 0
    assert speed["speedup"] == pytest.approx(speed["fp32_median_ms"] / speed["int8_median_ms"])
    assert fp32_name("student.int8.onnx") == "student.onnx"

    def row(model, precision, batch, median, backend="ort"):
        return {"model": model, "precision": precision, "backend": backend, "device": "cpu", "batch": batch,
                "latency_ms": {"median": median}}
    rows = [row("student.onnx", "fp32", 1, 0.2), row("student.int8.onnx", "int8", 1, 1.0),
            row("student.onnx", "fp32", 8, 2.0), row("student.int8.onnx", "int8", 8, 1.0),
            row("other.int8.onnx", "int8", 1, 1.0),  # its FP32 source was not measured: no pair
            row("student.int8.onnx", "int8", 4, 1.0),  # no FP32 row at batch 4
            {"model": "student.int8.onnx", "precision": "int8", "backend": "ort", "device": "cpu", "batch": 1,
             "error": "failed"}]
    pairs = int8_pairs(rows)
    assert [(p["batch"], p["speedup"]) for p in pairs] == [(1, pytest.approx(0.2)), (8, pytest.approx(2.0))]
    assert all(p["fp32_model"] == "student.onnx" for p in pairs)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibrations_with_an_uneven_last_batch(trained, method):
    root, fp32, calib = trained
    # 101 images in batches of 32: the histogram calibrators used to fail on the short last batch
    int8 = quantize_int8(fp32, root / f"{method}.onnx", calib[:101], method=method, batch_size=32)
    out = OrtRunner(int8).infer(calib[:4])
    assert out.shape == (4, 3) and np.isfinite(out).all()


def test_calibration_reader_batches_and_refusals():
    images = np.zeros((5, 3, 4, 4), dtype=np.float32)
    images[:, 0, 0, 0] = np.arange(5)
    reader = ImageCalibrationReader(images, "image", batch_size=2)
    batches = []
    while (feed := reader.get_next()) is not None:
        batches.append(feed["image"][:, 0, 0, 0].tolist())
    assert batches == [[0, 1], [2, 3], [4, 0]]  # equal sizes; the last wraps around
    reader.rewind()
    assert reader.get_next()["image"].shape == (2, 3, 4, 4) and len(reader) == 3
    assert ImageCalibrationReader(images, "image", fixed_batch=4).get_next()["image"].shape[0] == 4
    with pytest.raises(UserError, match="no calibration images"):
        ImageCalibrationReader(images[:0], "image")
    with pytest.raises(ValueError, match="float32"):
        ImageCalibrationReader(images.astype(np.float64), "image")


def test_unknown_method_and_broken_model_are_user_errors(trained, tmp_path):
    _, fp32, calib = trained
    with pytest.raises(UserError, match="--calibration"):
        quantize_int8(fp32, tmp_path / "x.onnx", calib[:4], method="kl")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    with pytest.raises(UserError, match="INT8 quantization"):
        quantize_int8(broken, tmp_path / "y.onnx", calib[:4])
    assert not (tmp_path / "y.onnx").exists()
