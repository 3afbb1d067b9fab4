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
    res = cli("export", run, "--onnx", "--rtol", "1e-4", "--out", tmp_path / "exp")
    assert res.exit_code == 0, res.output
    parity = json.loads((tmp_path / "exp" / "export.json").read_text())["parity"]
    assert parity["passed"] and parity["top1_agreement"] == 1.0
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
