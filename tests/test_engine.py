"""The shared training loop: checkpoints, resume, selection, divergence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from augkd_edge.checkpoint import load_safe
from augkd_edge.engine import NamedState, TrainingDiverged, fit
from augkd_edge.evaluate import topk_accuracy
from augkd_edge.metrics_log import MetricsLog
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


class SeededToy(ToyStage):
    """Batches from a (seed, epoch) generator, as the real stages draw them; dropout-like noise from the global RNG.

    ``crash_at``: raise after that many steps in total, like a kill between two checkpoints.
    """

    def __init__(self, crash_at: int | None = None, nan_at: int | None = None):
        super().__init__()
        self.crash_at, self.nan_at, self.steps, self.seen = crash_at, nan_at, 0, []

    def batches(self, epoch: int):
        from augkd_edge.batching import epoch_generator

        self.epochs_run.append(epoch)
        gen = epoch_generator(3, epoch)
        for _ in range(4):
            x = torch.randn(8, 4, generator=gen)
            yield x, x @ self.w.T

    def train_step(self, batch: Any) -> dict[str, torch.Tensor]:
        if self.crash_at is not None and self.steps == self.crash_at:
            raise KeyboardInterrupt
        x, y = batch
        self.seen.append(float(x[0, 0]))
        noise = torch.rand(x.shape) * 0.01  # global RNG, restored on resume
        loss = ((self.model(x + noise) - y) ** 2).mean()
        if self.nan_at is not None and self.steps >= self.nan_at:
            loss = loss * float("nan")
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.steps += 1
        return {"loss": loss.detach()}


@pytest.mark.parametrize("crash_at", [1, 5, 6, 9])
def test_mid_epoch_resume_replays_the_data_order_and_equals_uninterrupted(tmp_path: Path, crash_at: int) -> None:
    torch.manual_seed(1)
    ref = SeededToy()
    full = fit(ref, 3, tmp_path / "a.ckpt", progress=False, checkpoint_every=1)
    torch.manual_seed(1)
    with pytest.raises(KeyboardInterrupt):
        fit(SeededToy(crash_at=crash_at), 3, tmp_path / "b.ckpt", progress=False, checkpoint_every=1,
            log=MetricsLog(tmp_path / "b.jsonl"))
    ckpt = load_safe(tmp_path / "b.ckpt")
    assert (ckpt["epoch"], ckpt["step"]) == divmod(crash_at, 4)
    torch.manual_seed(999)  # another process: everything must come from the checkpoint
    stage = SeededToy()
    resumed = fit(stage, 3, tmp_path / "b.ckpt", progress=False, checkpoint_every=1,
                  log=MetricsLog(tmp_path / "b.jsonl"))
    assert stage.seen == ref.seen[crash_at:], "the resumed run did not continue the data order"
    assert torch.equal(resumed.best_state["model"]["weight"], full.best_state["model"]["weight"])
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    logged = [line for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert len(logged) == 3


def test_nan_between_epochs_never_reaches_a_step_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match="NaN/Inf in epoch 2"):
        fit(SeededToy(nan_at=6), 3, tmp_path / "n.ckpt", progress=False, checkpoint_every=1)
    ckpt = load_safe(tmp_path / "n.ckpt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 2)
    assert torch.isfinite(ckpt["state"]["model"]["weight"]).all()


def test_log_catches_up_an_epoch_lost_between_checkpoint_and_log_line(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "m.jsonl")
    log.write({"stage": "toy", "epoch": 1, "select": 1.0})
    log.catch_up("toy", [{"epoch": 1, "select": 1.0}, {"epoch": 2, "select": 0.5}])
    log.catch_up("toy", [{"epoch": 1, "select": 1.0}, {"epoch": 2, "select": 0.5}])
    import json

    assert [json.loads(x)["epoch"] for x in (tmp_path / "m.jsonl").read_text().splitlines()] == [1, 2]


def test_prefetch_keeps_order_and_reraises() -> None:
    from augkd_edge.device import prefetch

    assert list(prefetch(iter(range(50)), 3)) == list(range(50))

    def broken():
        yield 1
        raise ValueError("bad batch")

    it = prefetch(broken(), 2)
    assert next(it) == 1
    with pytest.raises(ValueError, match="bad batch"):
        next(it)
    early = prefetch(iter(range(1000)), 2)
    assert next(early) == 0
    early.close()  # a consumer that stops early does not leave the producer blocked


class NamedToy(NamedState, ToyStage):
    """The toy stage with its state from named parts, as the real stages keep it: its optimizer is visible."""

    best = ("model",)

    def parts(self) -> dict[str, Any]:
        return {"model": self.model, "opt": self.opt, "sched": self.sched}


def test_learning_rate_of_each_epoch_is_logged_before_the_scheduler_steps(tmp_path: Path) -> None:
    torch.manual_seed(1)
    res = fit(NamedToy(lr=0.1), 3, tmp_path / "n.ckpt", progress=False)
    assert [round(h["lr_opt"], 6) for h in res.history] == [0.1, 0.09, 0.081]
    plain = fit(ToyStage(), 1, tmp_path / "p.ckpt", progress=False)  # no parts(): nothing to read, nothing logged
    assert not any(k.startswith("lr_") for k in plain.history[0])
