"""What the AuG-KD stages and the baselines share.

- freezing (teacher, and G / E / A after their module): ``requires_grad`` off
  and eval mode, so frozen nets build no parameter gradients (defect 5 of the
  reference code trained a "frozen" teacher's graph every step);
- deterministic batches: every stage draws its epoch's order and augmentation
  from a generator seeded by (seed, epoch), so a resumed run replays exactly;
- :class:`StudentStage`: student training on student-domain batches with a loss
  parameterised by (teacher, u, tau). Module 3 (``mixup.py``) overrides how a
  batch becomes the student's input; the baselines (``baselines.py``) use it
  as is. One loop, one evaluation, one normalisation path for all of them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from augkd_edge.data import normalize
from augkd_edge.distributed import current
from augkd_edge.models.fold import folded_copy
from augkd_edge.precision import Precision

# ``augment(images, generator) -> images``, e.g. ``make_augment("digits")``.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

_SEED_STRIDE = 100_003


def make_augment(kind: str) -> Augment:
    """The data module's train-time augmentation for a domain kind, as a stage callable."""
    from augkd_edge.data import augment

    def run(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return augment(x, kind, generator)

    return run


def freeze(*modules: nn.Module | None) -> None:
    """Eval mode and no parameter gradients, for good (frozen nets of a stage)."""
    for module in modules:
        if module is not None:
            module.requires_grad_(False)
            module.eval()


def channels_last_on_cpu(device: torch.device, *modules: nn.Module | None) -> None:
    """Store conv weights as NHWC on CPU, where oneDNN runs them faster.

    Measured on the 2-core CPU (1 thread, batch 64, 32x32): generator (width
    64) forward+backward 1.00 s -> 0.40 s, MobileNet-V3-Small training step
    0.32 s -> 0.15 s; the ResNet-34 teacher's forward did not gain (0.18 s ->
    0.22 s), so frozen teachers are left alone. Same math, other memory layout;
    on GPUs the choice is left to the caller.
    """
    if device.type != "cpu":
        return
    for module in modules:
        if module is not None:
            module.to(memory_format=torch.channels_last)


@contextlib.contextmanager
def no_param_grads(module: nn.Module) -> Iterator[None]:
    """Temporarily stop ``module``'s parameters from collecting gradients.

    Gradients still flow *through* it to its inputs: Module 1's generator step
    backpropagates through the student to the images without filling (and
    paying for) the student's parameter gradients.
    """
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def epoch_generator(seed: int, epoch: int, device: torch.device | str = "cpu", stream: int = 0) -> torch.Generator:
    """A generator determined by (seed, epoch, stream) alone, so resumed epochs repeat exactly."""
    return torch.Generator(device=device).manual_seed(seed * _SEED_STRIDE + epoch * 101 + stream)


def split_batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Cut ``order`` into near-equal batches of at most ``batch_size``.

    Equal cuts rather than dropping or keeping a ragged last batch: with
    few-shot data (100 images, batch 64) dropping would lose a third of the
    data each epoch, and a last batch of 1 breaks BatchNorm in train mode.
    """
    if len(order) == 0:
        return []
    return list(torch.tensor_split(order, math.ceil(len(order) / batch_size)))


def labelled_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    augment: Augment | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
    """(images, labels, loss weight) batches in ``order``, augmented with ``generator``, on ``device``.

    Under torchrun every rank draws the same whole batch (same order, same
    augmentation) and keeps its share, so the ranks together train on exactly
    the single-process batch; the weight makes DDP's gradient average equal
    the whole batch's (``distributed.Dist.weight``; 1.0 in one process).
    Batches bound for a GPU are staged in pinned memory so the copy overlaps
    compute.
    """
    dist = current()
    for idx in split_batches(order, batch_size):
        dist.check_batch(len(idx), "training batch")
        x = images[idx]
        if augment is not None:
            x = augment(x, generator)
        x, y = dist.shard(x), dist.shard(labels[idx])
        if device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), dist.weight(len(idx))


def weighted(loss: torch.Tensor, weight: float) -> torch.Tensor:
    """``loss`` times this rank's share weight; untouched (same graph, same bits) in one process."""
    return loss if weight == 1.0 else loss * weight


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@torch.no_grad()
def recompute_bn_stats(
    model: nn.Module,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
) -> None:
    """Replace the BatchNorm running statistics by exact averages over ``images``.

    Short from-scratch runs leave running statistics behind the weights (and
    Module 3 trains on a mixture of real and generated images while evaluation
    sees real ones): METHOD.md measured 0.431 -> 0.619 from this alone.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or len(images) < 2:
        return
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average = exact mean over the batches
    model.train()
    device = next(model.parameters()).device
    for sl in chunks(len(images), batch_size):
        if sl.stop - sl.start < 2:
            continue
        model(normalize(images[sl].to(device, non_blocking=True), mean, std))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.train(was_training)


def teacher_energies(
    teacher: nn.Module,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    tau: float = 1.0,
    batch_size: int = 512,
) -> torch.Tensor:
    """Per-image teacher energy (low = the teacher is certain), on CPU.

    Module 3's uncertainty curriculum orders by it, and the run report shows it
    as the "what the teacher knows about the student domain" view.
    """
    from augkd_edge.engine import predict_logits
    from augkd_edge.losses import energy

    logits = predict_logits(teacher, images, mean, std, batch_size)
    return energy(logits, tau).cpu()


def classifier_metrics(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    prefix: str = "eval_",
) -> dict[str, float]:
    """Top-1/3/5 and CE through the engine's evaluation path, plus ``select``.

    ``select`` = 1 - top1, ties broken by the CE loss: the loss enters scaled
    below one sample's worth of accuracy (1 / n), so it only orders epochs
    with equal top-1 (frequent on small eval splits).
    """
    from augkd_edge.engine import predict_logits, topk_accuracy

    logits = predict_logits(model, images, mean, std)
    labels = labels.to(logits.device)
    acc = topk_accuracy(logits, labels)
    loss = float(F.cross_entropy(logits, labels)) if len(labels) else float("nan")
    tie = min(loss, 50.0) / (100.0 * max(len(labels), 1)) if math.isfinite(loss) else 0.0
    out = {f"{prefix}{k}": v for k, v in acc.items()}
    out[f"{prefix}loss"] = loss
    out["select"] = 1.0 - acc["top1"] + tie
    return out


def recipe(cfg: Any) -> dict[str, Any]:
    """Module 3's training recipe (a ``MixupConfig``) as :class:`StudentStage` keywords.

    The baselines train with the very same recipe, so their results differ
    from AuG-KD's only by the method.
    """
    return {
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "tau": cfg.tau,
        "recompute_bn": cfg.recompute_bn,
    }


class StudentStage:
    """Train a student on labelled student-domain images; the baselines and Module 3's base.

    Loss per batch: CE(S(x), y) without a teacher, else
    ``u * CE + (1 - u) * tau^2 * KL(T || S)`` with the teacher's logits on the
    very tensor the student sees (``losses.mixup_distill_loss``). Adam with
    weight decay, cosine learning-rate schedule stepped once per epoch
    (horizon = epochs; defect 4 stepped it per batch). Selection: eval-split
    top-1 (``classifier_metrics``). Subclasses change :meth:`student_inputs`
    (Module 3's mixup) and :meth:`epoch_order` (its curriculum).
    """

    def __init__(
        self,
        name: str,
        student: nn.Module,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        eval_x: torch.Tensor,
        eval_y: torch.Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        epochs: int,
        batch_size: int,
        lr: float,
        weight_decay: float,
        seed: int,
        augment: Augment | None = None,
        teacher: nn.Module | None = None,
        u: float = 1.0,
        tau: float = 1.0,
        recompute_bn: bool = False,
        optimizer: str = "adam",
        amp: str = "off",
    ):
        self.name = name
        freeze(teacher)
        # BN folded into the convs: the same function, fewer passes (models/fold.py)
        self.student, self.teacher = student, folded_copy(teacher) if teacher is not None else None
        self.train_x, self.train_y = train_x, train_y
        self.eval_x, self.eval_y = eval_x, eval_y
        self.mean, self.std = tuple(mean), tuple(std)
        self.epochs, self.batch_size, self.seed = epochs, batch_size, seed
        self.augment = augment
        self.u, self.tau = u, tau
        self.recompute_bn = recompute_bn
        self.device = next(student.parameters()).device
        channels_last_on_cpu(self.device, student)
        self.precision = Precision(amp, self.device)
        self.train_student = current().wrap(student)  # DDP under torchrun
        if optimizer == "adam":
            self.optimizer = torch.optim.Adam(student.parameters(), lr=lr, weight_decay=weight_decay)
        elif optimizer == "sgd":
            # from-scratch teachers: Nesterov SGD reaches a strong ResNet in a few epochs
            self.optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, nesterov=True,
                                             weight_decay=weight_decay)
        else:
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(epochs, 1))

    # ---- what subclasses change ----------------------------------------
    def epoch_order(self, epoch: int, generator: torch.Generator) -> torch.Tensor:
        """Indices of the training images used this epoch, in order."""
        return torch.randperm(len(self.train_y), generator=generator)

    def student_inputs(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised batch the student (and the teacher) see, and its labels."""
        return normalize(x, self.mean, self.std), y

    # ---- Stage protocol ---------------------------------------------------
    def train_mode(self) -> None:
        self.student.train()

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int, float]]:
        gen = epoch_generator(self.seed, epoch)
        order = self.epoch_order(epoch, gen)
        for x, y, weight in labelled_batches(
            self.train_x, self.train_y, order, self.batch_size, gen, self.device, self.augment
        ):
            yield x, y, epoch, weight

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor, int, float]) -> dict[str, torch.Tensor]:
        x, y, epoch, weight = batch
        with torch.no_grad(), self.precision.autocast():
            inputs, targets = self.student_inputs(x, y, epoch)
            teacher_logits = self.teacher(inputs).float() if self.teacher is not None else None
        with self.precision.autocast():
            student_logits = self.train_student(inputs).float()
        loss = self.loss(student_logits, teacher_logits, targets, self.ce_share(len(x), len(targets), epoch))
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward_step(weighted(loss, weight), self.optimizer)
        return {"loss": loss.detach()}

    def ce_share(self, n_real: int, n: int, epoch: int) -> float | torch.Tensor:
        """u of the loss for a batch of ``n`` inputs whose first ``n_real`` are real images (a float or per sample)."""
        return self.u

    def loss(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        targets: torch.Tensor,
        u: float | torch.Tensor,
    ) -> torch.Tensor:
        if teacher_logits is None:
            return F.cross_entropy(student_logits, targets)
        from augkd_edge.losses import mixup_distill_loss

        return mixup_distill_loss(student_logits, teacher_logits, targets, u, self.tau)

    def end_epoch(self, epoch: int) -> None:
        self.scheduler.step()
        current().sync_buffers(self.student)

    def evaluate(self) -> dict[str, float]:
        if self.recompute_bn:
            recompute_bn_stats(self.student, self.train_x, self.mean, self.std)
        return classifier_metrics(self.student, self.eval_x, self.eval_y, self.mean, self.std)

    def state_dict(self) -> dict[str, Any]:
        return {
            "student": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state.get("scaler", {}))

    def best_state(self) -> dict[str, Any]:
        return {"student": self.student.state_dict()}
