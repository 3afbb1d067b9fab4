"""--amp: autocast forwards, float32 losses, fp16 gradient scaling saved with the stage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from augkd_edge.checkpoint import load_safe
from augkd_edge.engine import fit
from augkd_edge.student_stage import StudentStage
from augkd_edge.precision import Precision


def _stage(amp: str) -> StudentStage:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                            nn.Linear(8 * 64, 4))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 4))
    x, y = torch.rand(24, 3, 8, 8), torch.arange(24) % 4
    return StudentStage("amp", student, x, y, x[:8], y[:8], mean=(0.5,) * 3, std=(0.25,) * 3, epochs=2,
                        batch_size=8, lr=0.01, weight_decay=0.0, seed=0, teacher=teacher, u=0.5, tau=4.0, amp=amp)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="amp must be one of"):
        Precision("fp8")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_trains_with_float32_losses_and_saves_the_scaler(tmp_path: Path, amp: str) -> None:
    stage = _stage(amp)
    batch = next(iter(stage.batches(0)))
    with stage.precision.autocast():
        assert stage.student(batch[0]).dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    out = stage.train_step(batch)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    result = fit(_stage(amp), 2, tmp_path / "s.ckpt", progress=False)
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.history)
    scaler = load_safe(tmp_path / "s.ckpt")["state"]["scaler"]
    if amp == "fp16":
        assert scaler["scale"] > 0 and "_growth_tracker" in scaler
        resumed = _stage(amp)
        resumed.load_state_dict(load_safe(tmp_path / "s.ckpt")["state"])
        assert resumed.precision.scaler.get_scale() == scaler["scale"]
    else:
        assert scaler == {}  # bf16 needs no scaling


def test_off_is_the_float32_path() -> None:
    a, b = _stage("off"), _stage("off")
    batch = next(iter(a.batches(0)))
    la = a.train_step(batch)["loss"]
    # the same step written out by hand, without the Precision wrapper
    from augkd_edge.data import normalize
    from augkd_edge.losses import mixup_distill_loss

    x, y, _, _, views = batch
    assert views is None  # no --unlabelled pool
    inputs = normalize(x, b.mean, b.std)
    with torch.no_grad():
        t = b.teacher(inputs)
    lb = mixup_distill_loss(b.student(inputs), t, y, 0.5, 4.0)
    assert torch.equal(la, lb.detach())
