"""The shared training loop: checkpoints, resume, selection, divergence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from augkd_edge.checkpoint import load_safe
from augkd_edge.engine import MetricsLog, TrainingDiverged, fit, topk_accuracy
from augkd_edge.errors import UserError


class ToyStage:
    """Linear regression with SGD; batches drawn from the global RNG to test RNG capture."""

    name = "toy"

    def __init__(self, lr: float = 0.1, explode_at: int | None = None):
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, 1, gamma=0.9)
        self.w = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
        self.explode_at = explode_at
        self.epochs_run: list[int] = []

    def train_mode(self) -> None:
        self.model.train()

    def batches(self, epoch: int):
        self.epochs_run.append(epoch)
        for _ in range(3):
            x = torch.randn(8, 4)  # global RNG: resume must restore it
            yield x, x @ self.w.T

    def train_step(self, batch: Any) -> dict[str, torch.Tensor]:
        x, y = batch
        loss = ((self.model(x) - y) ** 2).mean()
        if self.explode_at is not None and self.epochs_run[-1] >= self.explode_at:
            loss = loss * float("nan")
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def end_epoch(self, epoch: int) -> None:
        self.sched.step()

    def evaluate(self) -> dict[str, float]:
        with torch.no_grad():
            err = float((self.model.weight - self.w).abs().sum())
        return {"err": err, "select": err}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])

    def best_state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict()}


def test_fit_selects_best_and_logs(tmp_path: Path) -> None:
    torch.manual_seed(1)
    res = fit(ToyStage(), 5, tmp_path / "toy.ckpt", log=MetricsLog(tmp_path / "m.jsonl"), progress=False)
    assert res.best_epoch == min(range(1, 6), key=lambda e: res.history[e - 1]["select"])
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 5
    ckpt = load_safe(tmp_path / "toy.ckpt")
    assert ckpt["done"] and ckpt["epoch"] == 5


def test_resume_equals_uninterrupted_and_finished_stage_not_redone(tmp_path: Path) -> None:
    torch.manual_seed(1)
    full = fit(ToyStage(), 6, tmp_path / "a.ckpt", progress=False)
    torch.manual_seed(1)
    fit(ToyStage(), 3, tmp_path / "b.ckpt", progress=False)  # "killed" after epoch 3
    ckpt = load_safe(tmp_path / "b.ckpt")
    ckpt["done"] = False
    torch.save(ckpt, tmp_path / "b.ckpt")
    torch.manual_seed(999)  # a different process state: resume must restore the RNG
    stage = ToyStage()
    resumed = fit(stage, 6, tmp_path / "b.ckpt", progress=False)
    assert stage.epochs_run == [3, 4, 5]
    assert torch.equal(resumed.best_state["model"]["weight"], full.best_state["model"]["weight"])
    again = ToyStage()
    fit(again, 6, tmp_path / "b.ckpt", progress=False)
    assert again.epochs_run == [], "a finished stage was redone"


def test_changed_config_is_refused(tmp_path: Path) -> None:
    fit(ToyStage(), 1, tmp_path / "c.ckpt", progress=False, fingerprint="lr=0.1")
    with pytest.raises(UserError, match="another configuration"):
        fit(ToyStage(), 2, tmp_path / "c.ckpt", progress=False, fingerprint="lr=0.2")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match="NaN/Inf in epoch 3"):
        fit(ToyStage(explode_at=2), 5, tmp_path / "d.ckpt", progress=False)
    ckpt = load_safe(tmp_path / "d.ckpt")
    assert ckpt["epoch"] == 2 and torch.isfinite(ckpt["state"]["model"]["weight"]).all()


def test_topk_accuracy_known_values() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.0], [0.8, 0.1, 0.07, 0.03], [0.1, 0.2, 0.3, 0.4]])
    labels = torch.tensor([1, 2, 0])
    acc = topk_accuracy(logits, labels, ks=(1, 3, 5))
    assert acc["top1"] == pytest.approx(1 / 3)
    assert acc["top3"] == pytest.approx(2 / 3)  # sample 2: label 2 is 2nd; sample 3: label 0 is 4th
    assert acc["top5"] == 1.0


def test_stage_checkpoint_from_newer_version_is_refused(tmp_path: Path) -> None:
    fit(ToyStage(), 1, tmp_path / "e.ckpt", progress=False)
    ckpt = load_safe(tmp_path / "e.ckpt")
    ckpt["version"] = 99
    torch.save(ckpt, tmp_path / "e.ckpt")
    with pytest.raises(UserError, match="newer augkd-edge"):
        fit(ToyStage(), 2, tmp_path / "e.ckpt", progress=False)
