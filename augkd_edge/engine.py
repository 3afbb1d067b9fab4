"""The one place for training loops: the loop, its state and the stage checkpoint format.

The AuG-KD modules and the baselines (``augkd_edge.method``) only define what one
step does (:class:`Stage`); this module drives them. Keeping the loop here means
checkpointing, divergence checks and progress bars are written once and behave
the same for the teacher, Module 1, 2, 3 and every baseline. Around it:
``rng.py`` (the RNG states a checkpoint holds), ``metrics_log.py`` (metrics.jsonl),
``evaluate.py`` (evaluation), ``device.py`` (device choice, determinism).

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

import abc
import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol

from augkd_edge.errors import UserError
from augkd_edge.metrics_log import MetricsLog
from augkd_edge.rng import capture_rng, restore_rng

if TYPE_CHECKING:
    import torch

    from augkd_edge.distributed import Dist

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


class NamedState(abc.ABC):
    """A stage's ``state_dict`` / ``load_state_dict`` / ``best_state`` from its named parts.

    :meth:`parts`: name -> a network, optimizer, scheduler or ``Precision`` (anything with
    ``state_dict`` / ``load_state_dict``), or a dict of such (one per optimized net).
    ``best``: the names of the parts kept for the best epoch (its networks). Loading
    restores the parts a state holds (an older checkpoint may lack one, e.g. the AMP scaler).
    """

    best: tuple[str, ...] = ()

    @abc.abstractmethod
    def parts(self) -> dict[str, Any]:
        """name -> the stage's part; what a checkpoint holds."""

    def state_dict(self) -> dict[str, Any]:
        return {name: _state_of(part) for name, part in self.parts().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, part in self.parts().items():
            if name not in state:
                continue
            if isinstance(part, dict):
                for key, sub in part.items():
                    sub.load_state_dict(state[name][key])
            else:
                part.load_state_dict(state[name])

    def best_state(self) -> dict[str, Any]:
        parts = self.parts()
        return {name: _state_of(parts[name]) for name in self.best}


def _state_of(part: Any) -> Any:
    return {k: v.state_dict() for k, v in part.items()} if isinstance(part, dict) else part.state_dict()


def config_fingerprint(obj: Any) -> str:
    """A short hash of a stage's configuration (JSON), kept in its checkpoint: a resume with another refuses."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class TrainingDiverged(UserError):
    """A loss became NaN/Inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class FitResult:
    best_state: dict[str, Any]
    best_metrics: dict[str, float]
    best_epoch: int
    history: list[dict[str, float]]
    wall_s: float


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


def learning_rates(stage: Stage) -> dict[str, float]:
    """``lr_<part>``: the first parameter group's learning rate of each optimizer the stage holds (a dict of
    optimizers, as Module 1's, gives ``lr_<key>``). A stage that is not a :class:`NamedState` keeps its
    optimizers to itself (the Stage protocol does not expose them), so it logs none."""
    import torch

    rates: dict[str, float] = {}
    parts = stage.parts() if isinstance(stage, NamedState) else {}
    for name, part in parts.items():
        for key, opt in (part.items() if isinstance(part, dict) else [(name, part)]):
            if isinstance(opt, torch.optim.Optimizer):
                rates[f"lr_{key}"] = float(opt.param_groups[0]["lr"])
    return rates


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

    from augkd_edge.distributed import current

    dist = current()
    ckpt_path = Path(ckpt_path)
    log = log if (log is not None and dist.is_main) else MetricsLog(None)
    run = _FitState()
    if resume and _resumed(run, stage, epochs, ckpt_path, fingerprint, log, dist):
        return run.result()

    def save(done: bool) -> None:
        _save(run, stage, epochs, done, fingerprint, ckpt_path, dist)

    t0 = time.perf_counter()
    bar = tqdm(total=epochs, initial=run.epoch, desc=stage.name, disable=not (progress and dist.is_main),
               leave=False, unit="ep")
    for epoch in range(run.epoch, epochs):
        stage.train_mode()
        for batch in _epoch_batches(stage, epoch, run.step, prefetch_batches):
            out = stage.train_step(batch)
            for key, value in out.items():
                run.sums[key] = run.sums[key] + value.detach() if key in run.sums else value.detach().clone()
            run.step += 1
            if checkpoint_every and run.step % checkpoint_every == 0:
                run.check_finite(stage.name, epoch, ckpt_path)  # never checkpoint NaN weights
                run.clock(t0)
                save(done=False)
        rates = learning_rates(stage)  # as this epoch trained, before end_epoch steps the schedulers
        stage.end_epoch(epoch)
        # one host sync per epoch, not per step
        metrics = run.finish_epoch(stage.name, epoch, ckpt_path)
        metrics.update(stage.evaluate())
        metrics.update(rates)
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


def _resumed(run: "_FitState", stage: Stage, epochs: int, ckpt_path: Path, fingerprint: str | None,
             log: MetricsLog, dist: "Dist") -> bool:
    """Load the stage's checkpoint (if any) into ``run`` and ``stage``; True when the stage is already finished."""
    ckpt = load_stage_checkpoint(ckpt_path, stage.name, fingerprint)
    if ckpt is None:
        return False
    run.load(ckpt)
    log.catch_up(stage.name, run.history)
    if ckpt.get("done") or run.epoch >= epochs:
        return True
    _check_world(ckpt, ckpt_path, dist.world)
    stage.load_state_dict(ckpt["state"])
    rngs = ckpt.get("rng_ranks") or [ckpt["rng"]]
    restore_rng(rngs[dist.rank] if len(rngs) > dist.rank else rngs[0])
    return False


def _save(run: "_FitState", stage: Stage, epochs: int, done: bool, fingerprint: str | None, ckpt_path: Path,
          dist: "Dist") -> None:
    """The stage checkpoint (every rank's RNG states; rank 0 writes)."""
    from augkd_edge.checkpoint import save_atomic

    rngs = dist.gather(capture_rng())
    if dist.is_main:
        save_atomic({**run.record(stage, epochs, done, fingerprint, dist.world), "rng": rngs[0],
                     "rng_ranks": rngs if dist.enabled else None}, ckpt_path)


def _epoch_batches(stage: Stage, epoch: int, skip: int, prefetch_batches: int) -> Iterator[Any]:
    """The epoch's batches after the first ``skip`` (a mid-epoch resume replays the seeded order up to there)."""
    batches = iter(stage.batches(epoch))
    for _ in range(skip):
        next(batches)
    if prefetch_batches > 0:
        from augkd_edge.device import prefetch

        batches = prefetch(batches, prefetch_batches)
    return batches


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
            self.best_state, self.best_metrics = detached(stage.best_state()), dict(metrics)
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


def detached(state: dict[str, Any]) -> dict[str, Any]:
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
