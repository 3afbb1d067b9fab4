"""Runners agree with each other and with the model they wrap (CPU; CUDA/TensorRT skip here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from augkd_edge.errors import UserError
from augkd_edge.export.onnx import export_onnx
from augkd_edge.export.runtimes import OrtRunner, Runner, TorchRunner, TrtRunner, check_images, open_runner


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyNet().eval()
    path = tmp_path_factory.mktemp("rt") / "tiny.onnx"
    export_onnx(model, path, 16, opset=17)
    return model, path


def test_torch_and_ort_runners_agree(tiny_onnx):
    model, path = tiny_onnx
    x = np.random.default_rng(0).random((5, 3, 16, 16), dtype=np.float32)
    with TorchRunner(model) as ref, open_runner(path, threads=1) as ort_runner:
        assert isinstance(ref, Runner) and isinstance(ort_runner, Runner)
        assert (ort_runner.name, ort_runner.device, ort_runner.precision) == ("ort", "cpu", "fp32")
        expected = ref.infer(x)
        got = ort_runner.infer(x)
        assert got.dtype == np.float32 and got.shape == (5, 4)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        # prepare/run path (what latency loops use) runs the same model on the staged input
        ort_runner.prepare(x)
        ort_runner.run()
        ref.prepare(x)
        ref.run()


def test_run_before_prepare_and_bad_inputs_are_refused(tiny_onnx):
    model, path = tiny_onnx
    runner = OrtRunner(path)
    with pytest.raises(RuntimeError, match="prepare"):
        runner.run()
    with pytest.raises(ValueError, match="float32"):
        check_images(np.zeros((1, 3, 16, 16), dtype=np.uint8))
    with pytest.raises(ValueError, match="NCHW"):
        check_images(np.zeros((16, 16, 3), dtype=np.float32))
    runner.close()


def test_user_errors_name_the_problem(tmp_path, tiny_onnx):
    model, _ = tiny_onnx
    with pytest.raises(UserError, match="not found"):
        OrtRunner(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(UserError, match="cannot load"):
        OrtRunner(broken)
    with pytest.raises(UserError, match="unknown model file type"):
        open_runner(tmp_path / "model.tflite")
    with pytest.raises(UserError, match="fp16 needs device='cuda'"):
        TorchRunner(model, precision="fp16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when CUDA is absent")
def test_cuda_requests_fail_clearly_without_gpu(tiny_onnx):
    model, path = tiny_onnx
    with pytest.raises(UserError, match="no CUDA GPU"):
        TorchRunner(model, device="cuda")
    with pytest.raises(UserError, match="CUDAExecutionProvider"):
        OrtRunner(path, device="cuda")


def test_trt_runner_without_tensorrt_says_what_to_do(tmp_path):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="TensorRT.s Python bindings are not importable"):
            TrtRunner(tmp_path / "student.engine")
    else:
        pytest.skip("tensorrt is installed: the engine round trip is covered in test_export_trt.py")
