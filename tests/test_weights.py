"""``--student-weights`` / ``--teacher-weights``: torchvision weights names and state_dict files.

No network here: the torchvision path is tested with a file put into a
temporary ``TORCH_HOME`` under the name torchvision expects, and up to the
offline error with an empty one (a download attempt fails the test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner

from augkd_edge.cli import main
from augkd_edge.config import DistillConfig
from augkd_edge.errors import UserError
from augkd_edge.models.weights import initialise, resolve
from augkd_edge.models.zoo import build_classifier
from augkd_edge.teacher import TeacherSettings, settings_key

from test_pipeline import TINY

RESNET18_FILE = "resnet18-f37072fd.pth"  # the file name of ResNet18_Weights.IMAGENET1K_V1's URL


@pytest.fixture()
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME, and downloads made to fail loudly."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"tried to download {args[:1]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return home


@pytest.fixture(scope="module")
def imagenet_resnet18(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A resnet18 state_dict with torchvision's 1000-class head, as a file."""
    torch.manual_seed(1)
    state = torchvision.models.resnet18(num_classes=1000).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18-imagenet.pt"
    torch.save(state, path)
    return path, state


def _assert_body_loaded(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    assert loaded["fc.weight"].shape == (10, 512) and loaded["fc.bias"].shape == (10,)


def test_state_dict_file_keeps_body_and_replaces_head(imagenet_resnet18: tuple[Path, dict]) -> None:
    path, state = imagenet_resnet18
    torch.manual_seed(0)
    model = build_classifier("resnet18", 10)
    fresh_head = model.fc.weight.detach().clone()
    line = initialise(model, "resnet18", str(path), "--student-weights")
    _assert_body_loaded(model, state)
    assert torch.equal(model.fc.weight, fresh_head)  # the new head keeps its own init
    assert "\n" not in line and "kept 120 of 122 tensors" in line and "fc.weight, fc.bias (1000 classes)" in line
    assert model.layer1[0].bn1.momentum == 0.1  # build_classifier's BN momentum survives the load


def test_wrapped_and_ddp_state_dicts_and_matching_head(tmp_path: Path) -> None:
    source = build_classifier("resnet18", 10)
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = build_classifier("resnet18", 10)
    line = initialise(model, "resnet18", str(path))
    assert "kept 122 of 122" in line and "head fc kept" in line
    assert torch.equal(model.fc.weight, source.fc.weight)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "payload": Path("x")}, path)
    with pytest.raises(UserError, match="refused to load"):
        initialise(build_classifier("resnet18", 10), "resnet18", str(path))


def test_wrong_architecture_file_is_one_line_exit_2(tmp_path: Path, imagenet_resnet18: tuple[Path, dict]) -> None:
    path, _ = imagenet_resnet18
    out = tmp_path / "o"
    proc = subprocess.run(
        [sys.executable, "-m", "augkd_edge.cli", "distill", "--student", "mobilenet_v3_small", "--student-weights",
         str(path), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "weights do not fit mobilenet_v3_small" in proc.stderr and "missing keys" in proc.stderr
    assert not out.exists()  # failed before writing anything


def test_torchvision_name_loads_from_the_cache(torch_home: Path, imagenet_resnet18: tuple[Path, dict]) -> None:
    _, state = imagenet_resnet18
    cached = torch_home / "hub" / "checkpoints" / RESNET18_FILE
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    for spec in ("DEFAULT", "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"):
        model = build_classifier("resnet18", 10)
        line = initialise(model, "resnet18", spec, "--student-weights")
        assert line.startswith("--student-weights ResNet18_Weights.IMAGENET1K_V1: kept 120 of 122")
        _assert_body_loaded(model, state)
    assert resolve("resnet18", "DEFAULT").identity() == "torchvision:ResNet18_Weights.IMAGENET1K_V1"


def test_torchvision_name_offline_error_names_the_file(torch_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["distill", "--student", "resnet18", "--student-weights", "DEFAULT",
                                    "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert res.exit_code == 2, res.output
    error = res.output.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error
    assert RESNET18_FILE in error and str(torch_home / "hub" / "checkpoints") in error
    assert "$TORCH_HOME/hub/checkpoints/" in error
    assert not out.exists()


def test_unknown_weights_name_lists_the_valid_ones(torch_home: Path) -> None:
    with pytest.raises(UserError, match=r"valid names: IMAGENET1K_V1, DEFAULT"):
        resolve("resnet18", "IMAGENET1K_V9", "--student-weights")
    with pytest.raises(UserError, match=r"resnet18 takes ResNet18_Weights\.\*"):
        resolve("resnet18", "MobileNet_V2_Weights.DEFAULT")
    with pytest.raises(UserError, match="no such file, and not a torchvision weights name"):
        resolve("resnet18", "missing/weights.pt")


def test_config_validates_the_weights_options(imagenet_resnet18: tuple[Path, dict]) -> None:
    cfg = DistillConfig.from_dict({"student_weights": "DEFAULT", "teacher_weights": "x.pt"})
    assert DistillConfig.from_dict(json.loads(cfg.to_json())).student_weights == "DEFAULT"
    assert DistillConfig().student_weights is None and DistillConfig().teacher_weights is None
    with pytest.raises(UserError, match="teacher_weights"):
        DistillConfig.from_dict({"teacher_weights": "DEFAULT", "teacher_file": "t.pt"})
    with pytest.raises(UserError, match="student_weights"):
        DistillConfig.from_dict({"student_weights": " "})


def test_teacher_cache_key_includes_the_weights(tmp_path: Path, imagenet_resnet18: tuple[Path, dict]) -> None:
    path, _ = imagenet_resnet18
    plain = settings_key(TeacherSettings(arch="resnet18"))
    assert "weights" not in plain  # random-init teachers keep their old cache keys
    keyed = settings_key(TeacherSettings(arch="resnet18", weights=str(path)))
    assert keyed["weights"].startswith("file:sha256:")
    other = tmp_path / "other.pt"
    torch.save(build_classifier("resnet18", 10).state_dict(), other)
    assert settings_key(TeacherSettings(arch="resnet18", weights=str(other)))["weights"] != keyed["weights"]


def test_distill_end_to_end_with_weights_files(tmp_path: Path, imagenet_resnet18: tuple[Path, dict]) -> None:
    teacher_file, _ = imagenet_resnet18
    torch.manual_seed(2)
    student_file = tmp_path / "mv3.pt"
    student_state = torchvision.models.mobilenet_v3_small(num_classes=1000).state_dict()
    torch.save(student_state, student_file)
    out, cache = tmp_path / "run", tmp_path / "cache"
    res = CliRunner().invoke(main, ["distill", *TINY, "--method", "no-kd", "--mixup-epochs", "1",
                                    "--student-weights", str(student_file), "--teacher-weights", str(teacher_file),
                                    "--cache-dir", str(cache), "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert f"--student-weights {student_file}: kept" in res.output and "classifier.3" in res.output
    assert f"--teacher-weights {teacher_file}: kept 120 of 122" in res.output
    config = json.loads((out / "config.json").read_text())
    assert config["student_weights"] == str(student_file) and config["teacher_weights"] == str(teacher_file)
    assert "Pretrained starting weights" in (out / "report.md").read_text()
    teachers = list((cache / "teachers").iterdir())
    assert len(teachers) == 1
    assert json.loads((teachers[0] / "results.json").read_text())["settings"]["weights"] == str(teacher_file)
