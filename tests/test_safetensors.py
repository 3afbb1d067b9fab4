"""``.safetensors`` state_dicts for teachers and ``--*-weights`` (issue 23, item 2): read with the safetensors
library, which holds tensors only and runs no code; real files written by ``safetensors.torch.save_file``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from augkd_edge.checkpoint import is_safetensors
from augkd_edge.errors import UserError
from augkd_edge.models.loading import load_teacher
from augkd_edge.models.weights import initialise
from augkd_edge.models.zoo import build_classifier


@pytest.fixture(scope="module")
def resnet18_10(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(3)
    model = build_classifier("resnet18", 10).eval()
    path = tmp_path_factory.mktemp("st") / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model


def test_safetensors_teacher_gives_the_saved_network(resnet18_10: tuple[Path, torch.nn.Module]) -> None:
    path, model = resnet18_10
    teacher = load_teacher(path, "resnet18", 10, input_size=32)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher(x), model(x))


def test_safetensors_is_recognised_by_its_header_without_the_suffix(resnet18_10: tuple[Path, torch.nn.Module],
                                                                    tmp_path: Path) -> None:
    path, model = resnet18_10
    renamed = tmp_path / "teacher.bin"
    renamed.write_bytes(path.read_bytes())
    torch.save(model.state_dict(), tmp_path / "teacher.pt")
    assert is_safetensors(renamed) and not is_safetensors(tmp_path / "teacher.pt")
    assert torch.equal(load_teacher(renamed, "resnet18", 10).fc.weight, model.fc.weight)


def test_safetensors_student_weights_keep_the_body_and_replace_the_head(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_classifier("resnet18", 1000)
    path = tmp_path / "imagenet.safetensors"
    save_file(source.state_dict(), str(path))
    model = build_classifier("resnet18", 10)
    line = initialise(model, "resnet18", str(path), "--student-weights")
    assert "kept 120 of 122 tensors" in line and "fc.bias, fc.weight (1000 classes)" in line  # safetensors sorts keys
    assert torch.equal(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)


def test_safetensors_of_another_architecture_is_summarised(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(3, 3), "fc.weight": torch.zeros(10, 512)}, str(path))
    with pytest.raises(UserError) as err:
        load_teacher(path, "resnet18", 10)
    message = str(err.value)
    assert str(path) in message and "unexpected" in message and "encoder.weight" in message
    assert "\n" not in message


def test_truncated_safetensors_is_one_line_naming_the_file(resnet18_10: tuple[Path, torch.nn.Module],
                                                           tmp_path: Path) -> None:
    path, _ = resnet18_10
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for load in (lambda: load_teacher(cut, "resnet18", 10),
                 lambda: initialise(build_classifier("resnet18", 10), "resnet18", str(cut))):
        with pytest.raises(UserError, match="not a readable safetensors file") as err:
            load()
        assert str(cut) in str(err.value) and "\n" not in str(err.value)
