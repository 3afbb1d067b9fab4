"""``timm:NAME`` architectures (issue 23, item 1): real timm models in tiny configurations, built with
``pretrained=False``; weights by name only from a local Hugging Face cache (a real cache layout made here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm", reason="timm is the optional extra augkd-edge[timm]; the test extra installs it")
from safetensors.torch import save_file  # noqa: E402

from augkd_edge.errors import UserError  # noqa: E402
from augkd_edge.models.weights import initialise  # noqa: E402
from augkd_edge.models.zoo import build_classifier, head_name  # noqa: E402
from test_hostile import TINY, cli, export_archive, image_folder, tiny_net  # noqa: E402

SMALL = "timm:mobilenetv3_small_050"


def test_timm_model_is_built_by_timm_with_its_own_head() -> None:
    model = build_classifier(SMALL, 7)
    assert type(model).__module__.startswith("timm.") and head_name(model) == "classifier"
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    assert head_name(build_classifier("timm:resnet10t", 3)) == "fc"


def test_unknown_timm_name_suggests_close_ones() -> None:
    with pytest.raises(UserError, match=r"timm has no model 'mobilenetv3_smal'; did you mean timm:mobilenetv3_small"):
        build_classifier("timm:mobilenetv3_smal", 10)


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(UserError, match=r"pip install 'augkd-edge\[timm\]'"):
        build_classifier(SMALL, 10)


def _hf_cache(root: Path, repo: str, state: dict[str, torch.Tensor]) -> Path:
    """The layout huggingface_hub writes: refs/main -> snapshots/<revision>/model.safetensors."""
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    snap = folder / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))
    return snap / "model.safetensors"


def test_timm_weights_by_name_come_from_the_local_cache_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    model = build_classifier(SMALL, 10)
    with pytest.raises(UserError) as err:
        initialise(model, SMALL, "DEFAULT", "--student-weights")
    assert "timm/mobilenetv3_small_050.lamb_in1k" in str(err.value) and "does not download" in str(err.value)
    torch.manual_seed(2)
    source = build_classifier(SMALL, 1000)
    _hf_cache(tmp_path / "hub", "timm/mobilenetv3_small_050.lamb_in1k", source.state_dict())
    line = initialise(model, SMALL, "DEFAULT", "--student-weights")
    assert line.startswith("--student-weights timm timm/mobilenetv3_small_050.lamb_in1k: kept ")
    assert "dropped the head classifier.bias, classifier.weight (1000 classes)" in line
    assert torch.equal(model.conv_stem.weight, source.conv_stem.weight)
    with pytest.raises(UserError, match="valid names: DEFAULT, lamb_in1k"):
        initialise(model, SMALL, "in22k", "--student-weights")


def test_timm_student_distills_exports_with_parity_and_benches(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "data")
    teacher = export_archive(tmp_path / "two.pt2", model=tiny_net(2))
    run = tmp_path / "run"
    res = cli("distill", "--teacher", teacher, "--target", data, "--student", SMALL, "--method", "augkd", *TINY,
              "--out", run)
    assert res.exit_code == 0, res.output
    assert json.loads((run / "results.json").read_text())["student_arch"] == SMALL
    # one epoch on 4 images leaves logits near 1e4 (BatchNorm statistics of a few images); float32 rounding then
    # reaches ~6e-5 of them, so this tiny student gets rtol 1e-4
    # the INT8 gate and the TensorRT bundle as for a torchvision student: --max-drop 100 because one epoch on 4
    # images leaves a student whose INT8 drop says nothing; the gate still measures and records it
    res = cli("export", run, "--onnx", "--rtol", "1e-4", "--int8", "--calibration-size", "4", "--max-drop", "100",
              "--trt", "--threads", "1", "--out", tmp_path / "exp")
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "exp" / "export.json").read_text())
    parity = record["parity"]
    assert parity["passed"] and parity["top1_agreement"] == 1.0
    assert record["int8"]["accepted"] and record["int8"]["drop_points"] == pytest.approx(
        100 * (record["int8"]["fp32_top1"] - record["int8"]["int8_top1"]))
    support = record["tensorrt"]["op_support"]
    assert support["ok"] and {"Conv", "HardSigmoid"} <= set(support["operators"])
    bench = cli("bench", "run", run / "student.pt", tmp_path / "exp" / "student.onnx", "--iters", "2",
                "--eval", run, "--out", tmp_path / "bench")
    assert bench.exit_code == 0, bench.output
    rows = json.loads((tmp_path / "bench" / "report.json").read_text())["results"]
    assert len({r["top1"] for r in rows}) == 1  # torch and ONNX Runtime agree on the test split


def test_sweep_accepts_timm_students() -> None:
    from augkd_edge.cli.sweep import parse_students

    assert parse_students(f"resnet18,{SMALL}") == ["resnet18", SMALL]
    with pytest.raises(UserError, match="timm has no model"):
        parse_students("timm:nonexistent_net")


@pytest.mark.parametrize("name", ["mobilenetv4_conv_small", "efficientnet_lite0", "ghostnet_100"])
def test_timm_students_of_the_sweep_pass_the_tensorrt_op_check(tmp_path: Path, name: str) -> None:
    from augkd_edge.export.onnx import export_onnx
    from augkd_edge.export.trt_ops import check_tensorrt_support

    export_onnx(build_classifier(f"timm:{name}", 10).eval(), tmp_path / "s.onnx", 32, opset=17)
    report = check_tensorrt_support(tmp_path / "s.onnx")
    assert report.ok, str(report)


class _BitMask(torch.nn.Module):
    """Keep the low 3 bits of an 8-level quantisation: ONNX BitwiseAnd, which TensorRT's ONNX parser lists as
    unsupported."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bitwise_and((x * 8).to(torch.int32), 7).to(x.dtype) / 8


def test_timm_student_with_an_op_tensorrt_cannot_parse_is_named(tmp_path: Path) -> None:
    from augkd_edge.export.onnx import export_onnx
    from augkd_edge.export.trt_ops import check_tensorrt_support

    model = build_classifier(SMALL, 10).eval()
    model.conv_stem = torch.nn.Sequential(model.conv_stem, _BitMask())
    export_onnx(model, tmp_path / "s.onnx", 32, opset=18)
    report = check_tensorrt_support(tmp_path / "s.onnx")
    assert not report.ok and [o.op_type for o in report.offences] == ["BitwiseAnd"]
    assert "BitwiseAnd" in str(report.offences[0])
