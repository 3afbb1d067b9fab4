"""Model zoo, the augkd-edge model file, and safe loading of strangers' teachers."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from augkd_edge.checkpoint import load_safe, save_atomic
from augkd_edge.errors import UserError
from augkd_edge.models.loading import ModelMeta, load_model_file, load_teacher, save_model_file
from augkd_edge.models.zoo import build_classifier


class _Payload:
    """Unpickling this creates a file: proof that code from the checkpoint ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_file(tmp_path: Path, marker: Path) -> Path:
    path = tmp_path / "evil.pt"
    model = build_classifier("resnet18", 10)
    # A real torch checkpoint whose pickle also carries a payload.
    torch.save({"state_dict": model.state_dict(), "x": _Payload(str(marker))}, path)
    return path


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_build_classifier_heads_and_bn_momentum(arch: str) -> None:
    model = build_classifier(arch, 7)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    momenta = {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert momenta == {0.1}, "MobileNetV3's BN momentum 0.01 must be raised (docs/method.md, Module 3)"


def test_unknown_arch_is_user_error() -> None:
    with pytest.raises(UserError, match="unknown architecture"):
        build_classifier("resnet9000", 10)


def test_model_file_roundtrip(tmp_path: Path) -> None:
    model = build_classifier("resnet18", 3).eval()
    meta = ModelMeta("resnet18", 3, ["a", "b", "c"], 32, extra={"data": "x", "splits": {"test": [1, 2]}})
    path = save_model_file(tmp_path / "m.pt", model, meta)
    loaded, meta2 = load_model_file(path)
    assert meta2.class_names == ["a", "b", "c"] and meta2.extra["splits"]["test"] == [1, 2]
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _malicious_file(tmp_path, marker)
    # The payload is real: plain unpickling would create the marker file.
    with pytest.raises(UserError, match="refused to load"):
        load_teacher(path, "resnet18", 10)
    with pytest.raises(UserError, match="refused"):
        load_safe(path)
    assert not marker.exists(), "loading executed code from the checkpoint"
    # Sanity check of the test itself: unsafe loading does run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_raw_pickle_file_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned2"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(UserError):
        load_teacher(path, "resnet18", 10)
    assert not marker.exists()


def test_teacher_state_dict_needs_arch_and_matching_classes(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(build_classifier("resnet18", 10).state_dict(), path)
    assert load_teacher(path, "resnet18", 10)(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(UserError, match="--teacher-arch"):
        load_teacher(path, None, 10)
    with pytest.raises(UserError, match="do not fit"):
        load_teacher(path, "resnet18", 12)
    with pytest.raises(UserError, match="do not fit"):
        load_teacher(path, "resnet34", 10)


def test_teacher_torchscript_and_export_archives(tmp_path: Path) -> None:
    """Called at batch sizes other than the export's (2) and the probe's, as the training stack does."""
    from augkd_edge.models.setup import freeze

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()
    ts = tmp_path / "t.ts"
    torch.jit.script(model).save(str(ts))
    ep = tmp_path / "t.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(2, 3, 32, 32),)), str(ep))  # static batch 2
    for path in (ts, ep):
        teacher = load_teacher(path, None, 5)
        freeze(teacher)  # what every stage does to its teacher
        for batch in (1, 2, 5, 67):
            x = torch.rand(batch, 3, 32, 32)
            assert torch.allclose(teacher(x), model(x), atol=1e-6), (path.name, batch)
    with pytest.raises(UserError, match="expected \\(1, 7\\)"):
        load_teacher(ts, None, 7)


def test_truncated_checkpoint_is_user_error(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    save_atomic(build_classifier("resnet18", 10).state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_teacher(path, "resnet18", 10)


def test_save_atomic_keeps_old_file_when_write_fails(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_atomic({"v": torch.ones(1)}, path)

    class Unsaveable:
        def __reduce__(self):
            raise OSError("No space left on device")

    with pytest.raises(OSError):
        save_atomic({"v": Unsaveable()}, path)
    assert torch.equal(load_safe(path)["v"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"], "temporary file left behind"


def test_model_file_from_newer_version_is_refused(tmp_path: Path) -> None:
    path = save_model_file(tmp_path / "m.pt", build_classifier("resnet18", 3), ModelMeta("resnet18", 3, ["a", "b", "c"]))
    record = load_safe(path)
    record["version"] = 99
    torch.save(record, path)
    with pytest.raises(UserError, match="newer than this augkd-edge"):
        load_model_file(path)
