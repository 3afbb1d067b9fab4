"""folded_copy: conv -> BN folded for frozen eval-mode nets, the same function, the original untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from augkd_edge.models.fold import folded_copy
from augkd_edge.models.loading import load_teacher
from augkd_edge.models.zoo import build_classifier


def _with_nontrivial_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh BNs are identity maps in eval mode; give them statistics so the fold has work to do."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
    return model


def _n_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_folded_equals_original_and_original_untouched(arch: str) -> None:
    torch.manual_seed(0)
    model = _with_nontrivial_bn(build_classifier(arch, 10)).eval()
    model.train()  # folded_copy must not need (nor change) the caller's mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = folded_copy(model)

    assert folded is not model and _n_bn(folded) == 0 and _n_bn(model) > 0
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())
    assert model.training and all(p.requires_grad for p in model.parameters())
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)

    model.eval()
    x = torch.rand(4, 3, 32, 32)
    x_ref, x_fold = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ref, y_fold = model(x_ref), folded(x_fold)
    assert (y_ref - y_fold).abs().max().item() < 1e-4
    y_ref.sum().backward()
    y_fold.sum().backward()
    assert (x_ref.grad - x_fold.grad).abs().max().item() < 1e-4


def test_channels_last_is_kept() -> None:
    model = _with_nontrivial_bn(build_classifier("resnet18", 10)).eval().to(memory_format=torch.channels_last)
    folded = folded_copy(model)
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not convs[0].weight.is_contiguous()  # the 7x7 stem: strictly NHWC, not both layouts
    x = torch.rand(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert (model(x) - folded(x)).abs().max().item() < 1e-4


def _small_net() -> nn.Module:
    return _with_nontrivial_bn(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(4, 5))
    ).eval()  # fmt: skip


def test_torchscript_comes_back_unchanged() -> None:
    scripted = torch.jit.script(_small_net())
    assert folded_copy(scripted) is scripted


def test_export_archive_comes_back_unchanged(tmp_path: Path) -> None:
    model, x = _small_net(), torch.rand(2, 3, 32, 32)
    path = tmp_path / "t.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    teacher = load_teacher(path, None, 5)
    assert folded_copy(teacher) is teacher


def test_nothing_to_fold_comes_back_unchanged() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert folded_copy(model) is model
