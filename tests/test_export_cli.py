"""`augkd-edge export` end to end on a model file that records its student-domain data
(built-in optdigits) and splits, plus the user mistakes it must turn into one-line errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from augkd_edge.cli import main
from augkd_edge.models.loading import IMAGENET_MEAN, IMAGENET_STD, ModelMeta, save_model_file
from augkd_edge.models.zoo import build_classifier

TEST = list(range(0, 240))
TRAIN = list(range(400, 1000))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A mobilenet_v3_small 'student' with real decisions in seconds: BatchNorm statistics from the
    training images, then a least-squares head on its (random) features: about 45% test top-1
    with varied classes, and thin margins that INT8 visibly hurts (the refusal test relies on that)."""
    from augkd_edge.data import load_domain
    from augkd_edge.export.onnx import with_normalisation

    torch.manual_seed(0)
    domain = load_domain("digits:optdigits", 32)
    x, y = domain.images[TRAIN], domain.labels[TRAIN]
    model = build_classifier("mobilenet_v3_small", 10)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the one pass below
    wrapped = with_normalisation(model, IMAGENET_MEAN, IMAGENET_STD).train()
    head = model.classifier[-1]
    features: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda mod, inp, out: features.append(inp[0]))
    with torch.no_grad():
        wrapped(x)
    hook.remove()
    a = torch.cat([features[0], torch.ones(len(y), 1)], dim=1)
    target = torch.nn.functional.one_hot(y, 10).float()
    solution = torch.linalg.solve(a.T @ a + 1e-2 * torch.eye(a.shape[1]), a.T @ target)
    with torch.no_grad():
        head.weight.copy_(solution[:-1].T)
        head.bias.copy_(solution[-1])
    model.eval()
    root = tmp_path_factory.mktemp("run")
    meta = ModelMeta("mobilenet_v3_small", 10, domain.classes, input_size=32,
                     extra={"data": "digits:optdigits", "splits": {"train": TRAIN, "eval": TRAIN[:50], "test": TEST}})
    save_model_file(root / "student.pt", model, meta)
    return root


def _export(*args: str):
    return CliRunner().invoke(main, ["export", *args], catch_exceptions=False)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_onnx_int8_and_trt_bundle(run_dir, tmp_path):
    from augkd_edge.export.tensorrt import tensorrt_available

    out = tmp_path / "bundle"
    # A gate that can fail: this model's INT8 drop is ~7.5 points (the default 1.0 refuses it, see below)
    result = _export(str(run_dir), "--onnx", "--opset", "17", "--int8", "--calibration-size", "64",
                     "--max-drop", "10", "--trt", "--fp16", "--max-batch", "16", "--threads", "1",
                     "--out", str(out))
    assert result.exit_code == 0, result.output
    record = json.loads((out / "export.json").read_text())

    parity = record["parity"]
    assert parity["split"] == "test" and parity["images"] == len(TEST) and parity["passed"]
    assert parity["max_abs_diff"] < 1e-4 and parity["top1_agreement"] == 1.0
    assert record["input"] == {"name": "image", "shape": ["batch", 3, 32, 32], "dtype": "float32",
                               "layout": "NCHW", "range": [0.0, 1.0], "color": "RGB"}
    assert record["output"]["name"] == "logits" and record["output"]["shape"] == ["batch", 10]
    assert record["normalisation"]["in_graph"] and record["normalisation"]["mean"] == pytest.approx(IMAGENET_MEAN)
    assert record["class_names"] == [str(i) for i in range(10)] and record["opset"] == 17
    assert record["tools"]["onnxruntime"] and record["tools"]["torch"]
    for name, entry in record["files"].items():
        assert _sha(out / name) == entry["sha256"], name

    int8 = record["int8"]
    assert int8["target"] == "tensorrt" and int8["activations"] == "int8 symmetric per-tensor"  # --trt's form
    assert int8["speed_here"]["speedup"] > 0 and int8["speed_here"]["backend"] == "ort-cpu"
    assert "INT8 on this machine (ONNX Runtime CPU" in result.output
    assert int8["calibration"] == "minmax" and int8["calibration_split"] == "train"
    assert int8["calibration_images"] == 64 and int8["test_images"] == len(TEST)
    assert int8["drop_points"] == pytest.approx(100 * (int8["fp32_top1"] - int8["int8_top1"]))
    assert int8["max_drop_points"] == 10.0 and 0 < int8["drop_points"] <= 10.0
    assert int8["accepted"] and not int8["forced"] and 0.3 < int8["fp32_top1"] < 0.7
    assert "INT8: test top-1 FP32" in result.output

    trt = record["tensorrt"]
    assert trt["op_support"]["ok"] and trt["onnx"] == "student.int8.onnx"
    assert trt["trtexec"] == (
        "trtexec --onnx=student.int8.onnx --saveEngine=student.int8.engine --minShapes=image:1x3x32x32 "
        "--optShapes=image:8x3x32x32 --maxShapes=image:16x3x32x32 --fp16 --int8 --memPoolSize=workspace:1024M "
        "--timingCacheFile=timing.cache --skipInference")
    assert trt["trtexec"].split(" ", 1)[1] in (out / "build_engine.sh").read_text()
    if tensorrt_available():  # an engine is built and checked against ONNX Runtime
        assert trt["available"] is True and record["tools"]["tensorrt"]
        assert (out / "student.int8.engine").is_file() and trt["parity"]["passed"]
        assert "student.int8.engine" in record["files"]
    else:  # the bundle to build on the target
        assert trt["available"] is False and record["tools"]["tensorrt"] is None
        assert "not importable here" in result.output and not (out / "student.int8.engine").exists()


def test_int8_drop_over_the_limit_is_refused_unless_forced(run_dir, tmp_path):
    refused = tmp_path / "refused"
    # the TensorRT form loses ~7.5 points on this model: a gate that fails
    result = _export(str(run_dir / "student.pt"), "--int8", "--int8-for", "tensorrt", "--opset", "17",
                     "--calibration-size", "64", "--threads", "1", "--out", str(refused))
    assert result.exit_code == 3, result.output
    assert "--max-drop" in result.output and "not kept" in result.output
    assert (refused / "student.onnx").is_file() and not (refused / "student.int8.onnx").exists()
    record = json.loads((refused / "export.json").read_text())
    assert record["int8"]["drop_points"] > 1.0 and record["int8"]["accepted"] is False
    assert "student.int8.onnx" not in record["files"]

    forced = tmp_path / "forced"
    result = _export(str(run_dir), "--int8", "--int8-for", "tensorrt", "--opset", "17", "--calibration-size", "64",
                     "--force", "--threads", "1", "--out", str(forced))
    assert result.exit_code == 0, result.output
    record = json.loads((forced / "export.json").read_text())
    assert record["int8"]["forced"] is True and (forced / "student.int8.onnx").is_file()

    cpu = tmp_path / "cpu"  # without --trt: ONNX Runtime's CPU form, its speed here printed
    result = _export(str(run_dir), "--int8", "--opset", "17", "--calibration-size", "64", "--max-drop", "100",
                     "--threads", "1", "--out", str(cpu))
    assert result.exit_code == 0, result.output
    record = json.loads((cpu / "export.json").read_text())
    assert record["int8"]["target"] == "ort-cpu" and record["int8"]["activations"].startswith("uint8")
    assert f"{record['int8']['speed_here']['speedup']:.2f}x" in result.output


@pytest.mark.parametrize("args, message", [
    (["--onnx", "--int8-for", "ort-cpu"], "--int8-for ort-cpu applies to the INT8 model: add --int8"),
    (["--int8", "--int8-for", "ort-cpu", "--trt"], "TensorRT builds only from the symmetric form"),
])
def test_int8_target_mistakes_are_user_errors(run_dir, tmp_path, args, message):
    result = _export(str(run_dir), *args, "--out", str(tmp_path / "x"))
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "x" / "student.onnx").exists()  # refused before any work


def test_fixed_batch_bundle_has_a_static_engine(run_dir, tmp_path):
    out = tmp_path / "static"
    result = _export(str(run_dir), "--trt", "--opset", "17", "--batch", "50", "--threads", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    record = json.loads((out / "export.json").read_text())
    assert record["batch"] == 50 and record["input"]["shape"] == [50, 3, 32, 32]
    assert record["parity"]["passed"] and record["parity"]["images"] == len(TEST)  # 240 = 4 x 50 + 40, padded
    assert "Shapes" not in record["tensorrt"]["trtexec"] and record["tensorrt"]["settings"]["static_batch"] == 50


def _bad_model_files(tmp: Path, run_dir: Path) -> dict[str, Path]:
    good = (run_dir / "student.pt").read_bytes()
    truncated = tmp / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    garbage = tmp / "garbage.pt"
    garbage.write_bytes(b"definitely not a checkpoint")
    mismatched = tmp / "mismatched.pt"  # says mobilenet_v3_small, holds resnet18 weights
    meta = ModelMeta("mobilenet_v3_small", 10, [str(i) for i in range(10)])
    record = torch.load(run_dir / "student.pt", weights_only=True)
    record["state_dict"] = build_classifier("resnet18", 10).state_dict()
    torch.save(record, mismatched)
    plain = tmp / "plain_state_dict.pt"
    torch.save(build_classifier("mobilenet_v3_small", 10).state_dict(), plain)
    wrong_classes = tmp / "wrong_classes.pt"
    save_model_file(wrong_classes, build_classifier("mobilenet_v3_small", 10), meta)
    record = torch.load(wrong_classes, weights_only=True)
    record["num_classes"] = 12
    torch.save(record, wrong_classes)
    return {"truncated": truncated, "garbage": garbage, "mismatched": mismatched, "plain": plain,
            "wrong_classes": wrong_classes, "missing": tmp / "nope.pt", "empty_dir": _empty_dir(tmp)}


def _empty_dir(tmp: Path) -> Path:
    folder = tmp / "empty_run"
    folder.mkdir()
    return folder


def test_corrupt_and_mismatched_model_files_are_one_line_errors(run_dir, tmp_path):
    for kind, path in _bad_model_files(tmp_path, run_dir).items():
        result = CliRunner().invoke(main, ["export", str(path), "--onnx", "--out", str(tmp_path / kind)])
        assert result.exit_code == 2, (kind, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("augkd-edge: error: "), (kind, result.stderr)
        assert str(path) in lines[0], (kind, lines[0])
        assert not (tmp_path / kind / "student.onnx").exists()


@pytest.mark.parametrize("args, message", [
    ([], "nothing to export"),
    (["--onnx", "--batch", "many"], "--batch 'many'"),
    (["--onnx", "--fp16"], "--fp16 applies to the TensorRT engine"),
    (["--trt", "--min-batch", "8", "--opt-batch", "4"], "--min-batch <= --opt-batch"),
])
def test_option_mistakes(run_dir, tmp_path, args, message):
    result = CliRunner().invoke(main, ["export", str(run_dir), *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and message in result.stderr, result.output


def test_real_process_prints_one_line_and_exits_2(tmp_path):
    bad = tmp_path / "student.pt"
    bad.write_bytes(b"\x00" * 64)
    proc = subprocess.run([sys.executable, "-c", "from augkd_edge.cli import main; main()", "export", str(bad),
                           "--onnx", "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(bad) in proc.stderr and "Traceback" not in proc.stderr


def test_python_api_export_student_matches_the_command(run_dir, tmp_path):
    """augkd_edge.export_student is the command without click: same record, same checks."""
    import augkd_edge

    record = augkd_edge.export_student(run_dir, tmp_path / "api", opset=17, threads=1)
    on_disk = json.loads((tmp_path / "api" / "export.json").read_text())
    assert record["parity"] == on_disk["parity"] and record["parity"]["passed"]
    assert set(record["files"]) == {"student.onnx"}
    with pytest.raises(augkd_edge.errors.UserError, match="nothing to export"):
        augkd_edge.export_student(run_dir, tmp_path / "none", onnx=False)
