"""The one place for training loops: epochs, progress, metrics, checkpoints, resume.

The AuG-KD modules and the baselines (``augkd_edge.method``) only define what one
step does (:class:`Stage`); this module drives them. Keeping the loop here means
checkpointing, RNG capture, divergence checks and progress bars are written once
and behave the same for the teacher, Module 1, 2, 3 and every baseline.

Stage checkpoint file (``<stage>.ckpt``, one ``torch.save`` of plain data,
loadable with ``weights_only=True``)::

    {"format": "augkd-edge/stage", "version": 1, "stage": name,
     "epoch": epochs completed, "epochs": planned, "done": bool,
     "state": Stage.state_dict(), "best_state": ..., "best_metrics": {...},
     "best_epoch": int, "history": [per-epoch metrics], "rng": {...},
     "wall_s": float, "fingerprint": config fingerprint}
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Protocol, Sequence

from augkd_edge.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

STAGE_FORMAT = "augkd-edge/stage"
STAGE_VERSION = 1


class Stage(Protocol):
    """One trainable phase (teacher training, Module 1/2/3, a baseline)."""

    name: str

    def train_mode(self) -> None: ...

    def batches(self, epoch: int) -> Iterable[Any]: ...

    def train_step(self, batch: Any) -> dict[str, "torch.Tensor"]: ...

    def end_epoch(self, epoch: int) -> None: ...

    def evaluate(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def best_state(self) -> dict[str, Any]: ...


class TrainingDiverged(UserError):
    """A loss became NaN/Inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class FitResult:
    best_state: dict[str, Any]
    best_metrics: dict[str, float]
    best_epoch: int
    history: list[dict[str, float]]
    wall_s: float


def select_device(name: str = "auto") -> "torch.device":
    """``auto`` picks CUDA when present; an explicit request that cannot be met is a user error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible to PyTorch; use --device cpu or auto.")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"--device {name!r} is not a device name (use auto, cpu, cuda, cuda:N)") from exc


class MetricsLog:
    """Append-only JSON lines, flushed per record so an interrupted run keeps its history."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")


def predict_logits(
    model: "nn.Module",
    images: "torch.Tensor",
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
) -> "torch.Tensor":
    """Logits for [0,1] images through the one normalisation path the model trained with."""
    import torch

    from augkd_edge.data import normalize

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device, non_blocking=True)
            out.append(model(normalize(x, mean, std)).float())
    model.train(was_training)
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)


def topk_accuracy(logits: "torch.Tensor", labels: "torch.Tensor", ks: Sequence[int] = (1, 3, 5)) -> dict[str, float]:
    """Top-k hit rates; k beyond the class count counts every sample as a hit."""
    labels = labels.to(logits.device)
    n = len(labels)
    if n == 0:
        return {f"top{k}": float("nan") for k in ks}
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(labels[:, None])
    result = {}
    for k in ks:
        result[f"top{k}"] = float(hits[:, :k].any(dim=1).float().mean()) if k <= kmax else 1.0
    return result


def evaluate_classifier(
    model: "nn.Module",
    images: "torch.Tensor",
    labels: "torch.Tensor",
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
) -> dict[str, float]:
    """Top-1/3/5 as fractions in [0, 1], in eval mode, without gradients."""
    return topk_accuracy(predict_logits(model, images, mean, std, batch_size), labels)


def capture_rng() -> dict[str, Any]:
    """All RNG states as tensors / plain data, so the checkpoint loads with weights_only."""
    import numpy as np
    import torch

    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype("int64")), *np_state[2:]],
        "python": _tuple_to_list(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype("uint32"), *np_state[2:]))
    random.setstate(_list_to_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuple_to_list(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return [_tuple_to_list(v) for v in obj]
    return obj


def _list_to_tuple(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_list_to_tuple(v) for v in obj)
    return obj


def load_stage_checkpoint(path: Path, stage_name: str, fingerprint: str | None) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it belongs to this stage and config, else None / an error."""
    from augkd_edge.checkpoint import load_safe

    if not path.exists():
        return None
    ckpt = load_safe(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != STAGE_FORMAT:
        raise UserError(f"{path}: not an augkd-edge stage checkpoint; delete it or use another --out.")
    if int(ckpt.get("version", 0)) > STAGE_VERSION:
        raise UserError(
            f"{path}: written by a newer augkd-edge (stage format {ckpt.get('version')}); upgrade to resume."
        )
    if ckpt.get("stage") != stage_name:
        raise UserError(f"{path}: holds stage {ckpt.get('stage')!r}, expected {stage_name!r}.")
    if fingerprint is not None and ckpt.get("fingerprint") not in (None, fingerprint):
        raise UserError(
            f"{path}: was made with another configuration; resume with the same options or use a new --out."
        )
    return ckpt


def fit(
    stage: Stage,
    epochs: int,
    ckpt_path: str | Path,
    *,
    log: MetricsLog | None = None,
    resume: bool = True,
    progress: bool = True,
    fingerprint: str | None = None,
) -> FitResult:
    """Train ``stage`` for ``epochs``, checkpointing after every epoch.

    With ``resume`` an existing checkpoint continues where it stopped, and a
    finished stage is returned without redoing any work. The best epoch is
    chosen by the stage's ``evaluate()["select"]`` (lower is better), which
    stages compute on eval data only.
    """
    import torch
    from tqdm.auto import tqdm

    from augkd_edge.checkpoint import save_atomic

    ckpt_path = Path(ckpt_path)
    log = log or MetricsLog(None)
    start_epoch = 0
    best_select = math.inf
    best_state: dict[str, Any] = {}
    best_metrics: dict[str, float] = {}
    best_epoch = -1
    history: list[dict[str, float]] = []
    wall_before = 0.0

    ckpt = load_stage_checkpoint(ckpt_path, stage.name, fingerprint) if resume else None
    if ckpt is not None:
        stage.load_state_dict(ckpt["state"])
        best_state, best_metrics = ckpt["best_state"], ckpt["best_metrics"]
        best_epoch, history = int(ckpt["best_epoch"]), list(ckpt["history"])
        best_select = float(best_metrics.get("select", math.inf))
        start_epoch, wall_before = int(ckpt["epoch"]), float(ckpt["wall_s"])
        restore_rng(ckpt["rng"])
        if ckpt.get("done") or start_epoch >= epochs:
            return FitResult(best_state, best_metrics, best_epoch, history, wall_before)

    t0 = time.perf_counter()
    bar = tqdm(total=epochs, initial=start_epoch, desc=stage.name, disable=not progress, leave=False, unit="ep")
    for epoch in range(start_epoch, epochs):
        stage.train_mode()
        sums: dict[str, torch.Tensor] = {}
        steps = 0
        for batch in stage.batches(epoch):
            out = stage.train_step(batch)
            for key, value in out.items():
                sums[key] = sums[key] + value if key in sums else value.detach().clone()
            steps += 1
        stage.end_epoch(epoch)
        # one host sync per epoch, not per step
        metrics = {f"train_{k}": float(v) / max(steps, 1) for k, v in sums.items()}
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise TrainingDiverged(
                f"{stage.name}: {', '.join(bad)} became NaN/Inf in epoch {epoch + 1}; the last good "
                f"checkpoint {ckpt_path} is kept. Lower the learning rate or check the inputs."
            )
        metrics.update(stage.evaluate())
        metrics["epoch"] = epoch + 1
        history.append(metrics)
        if metrics["select"] < best_select:
            best_select = metrics["select"]
            best_state, best_metrics, best_epoch = _detached(stage.best_state()), dict(metrics), epoch + 1
        wall = wall_before + time.perf_counter() - t0
        log.write({"stage": stage.name, "wall_s": round(wall, 3), **metrics})
        save_atomic(
            {
                "format": STAGE_FORMAT,
                "version": STAGE_VERSION,
                "stage": stage.name,
                "epoch": epoch + 1,
                "epochs": epochs,
                "done": epoch + 1 >= epochs,
                "state": stage.state_dict(),
                "best_state": best_state,
                "best_metrics": best_metrics,
                "best_epoch": best_epoch,
                "history": history,
                "rng": capture_rng(),
                "wall_s": wall,
                "fingerprint": fingerprint,
            },
            ckpt_path,
        )
        bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items() if k in ("select", "train_loss")})
        bar.update(1)
    bar.close()
    return FitResult(best_state, best_metrics, best_epoch, history, wall_before + time.perf_counter() - t0)


def _detached(state: dict[str, Any]) -> dict[str, Any]:
    """Deep copy of tensors so later training steps cannot change the kept best weights."""
    import torch

    def copy(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj.detach().to("cpu", copy=True)
        if isinstance(obj, dict):
            return {k: copy(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(copy(v) for v in obj)
        return obj

    return copy(state)
