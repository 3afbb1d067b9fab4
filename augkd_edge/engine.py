"""The one place for training loops: epochs, progress, metrics, checkpoints, resume.

The AuG-KD modules and the baselines (``augkd_edge.method``) only define what one
step does (:class:`Stage`); this module drives them. Keeping the loop here means
checkpointing, RNG capture, divergence checks and progress bars are written once
and behave the same for the teacher, Module 1, 2, 3 and every baseline.

Stage checkpoint file (``<stage>.ckpt``, one ``torch.save`` of plain data,
loadable with ``weights_only=True``), written every N steps and after every
epoch::

    {"format": "augkd-edge/stage", "version": 2, "stage": name,
     "epoch": epochs completed, "step": steps completed in the next epoch,
     "sums": {metric: partial sum over those steps}, "epochs": planned, "done": bool,
     "state": Stage.state_dict() (models, optimizers, schedulers, AMP scaler),
     "best_state": ..., "best_metrics": {...}, "best_epoch": int,
     "history": [per-epoch metrics], "rng": rank 0's RNG states {...},
     "rng_ranks": [per-rank RNG states] | None, "world": process count,
     "wall_s": float, "fingerprint": config fingerprint}

Version 1 files (epoch boundaries only) still load.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol, Sequence

from augkd_edge.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

STAGE_FORMAT = "augkd-edge/stage"
STAGE_VERSION = 2


class Stage(Protocol):
    """One trainable phase (teacher training, Module 1/2/3, a baseline).

    ``batches(epoch)`` must draw its randomness from a generator seeded by
    (seed, epoch), never from the global RNG: a mid-epoch resume replays the
    epoch's batches to skip the ones already trained on, and the global RNG
    (dropout, reparameterisation noise) is restored from the checkpoint.
    """

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

    def catch_up(self, stage: str, history: list[dict[str, Any]]) -> None:
        """Append the epochs of ``history`` the log lacks (a kill between checkpoint and log line).

        The checkpoint is written before the log line, so after a kill the log
        may miss an epoch but never holds one that a resume will redo.
        """
        if self.path is None or not history:
            return
        logged = 0
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
                if record.get("stage") == stage:
                    logged = max(logged, int(record.get("epoch", 0)))
        for metrics in history:
            if int(metrics["epoch"]) > logged:
                self.write({"stage": stage, **metrics})


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
    checkpoint_every: int = 0,
    prefetch_batches: int = 0,
) -> FitResult:
    """Train ``stage`` for ``epochs``, checkpointing every ``checkpoint_every`` steps and after every epoch.

    With ``resume`` an existing checkpoint continues where it stopped: at an
    epoch boundary, or mid-epoch at the step it recorded (the epoch's batches
    are replayed from their seeded generator and the first ``step`` skipped,
    so the data order continues exactly). A finished stage is returned without
    redoing any work. The best epoch is chosen by the stage's
    ``evaluate()["select"]`` (lower is better), which stages compute on eval
    data only. Under torchrun only rank 0 writes; all ranks load.
    ``prefetch_batches`` > 0 prepares that many batches ahead in a
    background thread (useful when a GPU would otherwise wait for the host).
    """
    from tqdm.auto import tqdm

    from augkd_edge.checkpoint import save_atomic
    from augkd_edge.distributed import current

    dist = current()
    ckpt_path = Path(ckpt_path)
    log = log if (log is not None and dist.is_main) else MetricsLog(None)
    run = _FitState()

    ckpt = load_stage_checkpoint(ckpt_path, stage.name, fingerprint) if resume else None
    if ckpt is not None:
        run.load(ckpt)
        log.catch_up(stage.name, run.history)
        if ckpt.get("done") or run.epoch >= epochs:
            return run.result()
        _check_world(ckpt, ckpt_path, dist.world)
        stage.load_state_dict(ckpt["state"])
        rngs = ckpt.get("rng_ranks") or [ckpt["rng"]]
        restore_rng(rngs[dist.rank] if len(rngs) > dist.rank else rngs[0])

    def save(done: bool) -> None:
        rngs = dist.gather(capture_rng())
        if dist.is_main:
            save_atomic({**run.record(stage, epochs, done, fingerprint, dist.world), "rng": rngs[0],
                         "rng_ranks": rngs if dist.enabled else None}, ckpt_path)

    t0 = time.perf_counter()
    bar = tqdm(total=epochs, initial=run.epoch, desc=stage.name, disable=not (progress and dist.is_main),
               leave=False, unit="ep")
    for epoch in range(run.epoch, epochs):
        stage.train_mode()
        batches = iter(stage.batches(epoch))
        for _ in range(run.step):  # mid-epoch resume: replay the seeded order up to where it stopped
            next(batches)
        if prefetch_batches > 0:
            batches = prefetch(batches, prefetch_batches)
        for batch in batches:
            out = stage.train_step(batch)
            for key, value in out.items():
                run.sums[key] = run.sums[key] + value.detach() if key in run.sums else value.detach().clone()
            run.step += 1
            if checkpoint_every and run.step % checkpoint_every == 0:
                run.check_finite(stage.name, epoch, ckpt_path)  # never checkpoint NaN weights
                run.clock(t0)
                save(done=False)
        stage.end_epoch(epoch)
        # one host sync per epoch, not per step
        metrics = run.finish_epoch(stage.name, epoch, ckpt_path)
        metrics.update(stage.evaluate())
        metrics["epoch"] = epoch + 1
        run.add_epoch(stage, metrics)
        metrics["wall_s"] = round(run.clock(t0), 3)
        save(done=epoch + 1 >= epochs)
        log.write({"stage": stage.name, **metrics})
        bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items() if k in ("select", "train_loss")})
        bar.update(1)
    bar.close()
    run.clock(t0)
    return run.result()


class _FitState:
    """Where a fit stands: epoch/step, partial sums, best so far, history (what a checkpoint holds)."""

    def __init__(self) -> None:
        self.epoch = 0  # epochs completed
        self.step = 0  # steps completed in the current epoch
        self.sums: dict[str, "torch.Tensor"] = {}
        self.best_select = math.inf
        self.best_state: dict[str, Any] = {}
        self.best_metrics: dict[str, float] = {}
        self.best_epoch = -1
        self.history: list[dict[str, float]] = []
        self.wall_before = 0.0
        self.wall = 0.0

    def load(self, ckpt: dict[str, Any]) -> None:
        self.best_state, self.best_metrics = ckpt["best_state"], ckpt["best_metrics"]
        self.best_epoch, self.history = int(ckpt["best_epoch"]), list(ckpt["history"])
        self.best_select = float(self.best_metrics.get("select", math.inf))
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt.get("step", 0))
        self.sums = dict(ckpt.get("sums") or {})
        self.wall_before = self.wall = float(ckpt["wall_s"])

    def check_finite(self, name: str, epoch: int, ckpt_path: Path) -> dict[str, float]:
        """Mean training metrics so far, averaged over ranks (so every rank decides alike); raise on NaN/Inf."""
        from augkd_edge.distributed import current

        sums = current().mean(self.sums)
        metrics = {f"train_{k}": float(v) / max(self.step, 1) for k, v in sums.items()}
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise TrainingDiverged(
                f"{name}: {', '.join(bad)} became NaN/Inf in epoch {epoch + 1}; the last good "
                f"checkpoint {ckpt_path} is kept. Lower the learning rate or check the inputs."
            )
        return metrics

    def finish_epoch(self, name: str, epoch: int, ckpt_path: Path) -> dict[str, float]:
        metrics = self.check_finite(name, epoch, ckpt_path)
        self.epoch, self.step, self.sums = epoch + 1, 0, {}
        return metrics

    def clock(self, t0: float) -> float:
        """Wall seconds of this stage so far: earlier sessions plus this one (started at ``t0``)."""
        self.wall = self.wall_before + time.perf_counter() - t0
        return self.wall

    def add_epoch(self, stage: Stage, metrics: dict[str, float]) -> None:
        self.history.append(metrics)
        if metrics["select"] < self.best_select:
            self.best_select = metrics["select"]
            self.best_state, self.best_metrics = _detached(stage.best_state()), dict(metrics)
            self.best_epoch = int(metrics["epoch"])

    def record(self, stage: Stage, epochs: int, done: bool, fingerprint: str | None, world: int) -> dict[str, Any]:
        return {
            "format": STAGE_FORMAT,
            "version": STAGE_VERSION,
            "stage": stage.name,
            "epoch": self.epoch,
            "step": self.step,
            "sums": {k: v.detach().cpu() for k, v in self.sums.items()},
            "epochs": epochs,
            "done": done,
            "state": stage.state_dict(),
            "best_state": self.best_state,
            "best_metrics": self.best_metrics,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "wall_s": self.wall,
            "fingerprint": fingerprint,
            "world": world,
        }

    def result(self) -> FitResult:
        return FitResult(self.best_state, self.best_metrics, self.best_epoch, self.history, self.wall)


def _check_world(ckpt: dict[str, Any], path: Path, world: int) -> None:
    """An unfinished stage continues only with the process count that wrote it (same batch shares)."""
    written = int(ckpt.get("world", 1))
    if written != world:
        raise UserError(
            f"{path}: this stage was interrupted in a run with {written} process(es), this run has {world}; "
            f"resume with the same count (torchrun --nproc-per-node {written}) or use a new --out."
        )


def prefetch(batches: Iterator[Any], depth: int) -> Iterator[Any]:
    """Produce ``batches`` in a background thread, ``depth`` ahead, in the same order.

    One producer keeps the order (and the seeded augmentation) exactly as
    without prefetching; an exception in the producer is re-raised here.
    """
    import queue
    import threading

    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in batches:
                if stop.is_set():
                    return
                q.put((True, item))
            q.put((True, done))
        except BaseException as exc:  # handed to the consumer
            q.put((False, exc))

    thread = threading.Thread(target=produce, daemon=True, name="augkd-prefetch")
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def prefetch_depth(device: "torch.device") -> int:
    """Batches to prepare ahead for ``fit``: 2 when a GPU would otherwise wait, none on CPU.

    On a CPU the producer thread would only compete with training for the same cores.
    """
    return 2 if device.type == "cuda" else 0


def set_deterministic(enabled: bool = True) -> None:
    """Deterministic kernels (``--deterministic``): same inputs, same bits, at some speed cost.

    CUDA's cuBLAS needs its workspace config set before the first matmul;
    cuDNN's autotuner is turned off because it may pick different algorithms
    in different processes.
    """
    import os

    import torch

    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


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
