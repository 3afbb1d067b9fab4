"""The student training stage: the teacher, the baselines and Module 3 all train through it.

:class:`StudentStage` trains a classifier on labelled images with a loss
parameterised by (teacher, u, tau). Module 3 (``method/mixup.py``) overrides how
a batch becomes the student's input; the baselines (``method/baselines.py``)
and the teacher (``teacher.py``) use it as is. One loop, one evaluation, one
normalisation path for all of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from augkd_edge.batching import epoch_generator, labelled_batches, weighted
from augkd_edge.data import normalize
from augkd_edge.data.augment import Augment
from augkd_edge.distributed import current
from augkd_edge.engine import NamedState
from augkd_edge.evaluate import classifier_metrics, recompute_bn_stats
from augkd_edge.models.fold import folded_copy
from augkd_edge.models.setup import channels_last_on_cpu, freeze
from augkd_edge.precision import Precision


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


class StudentStage(NamedState):
    """Train a student on labelled student-domain images; the baselines and Module 3's base.

    Loss per batch: CE(S(x), y) without a teacher, else
    ``u * CE + (1 - u) * tau^2 * KL(T || S)`` with the teacher's logits on the
    very tensor the student sees (``losses.mixup_distill_loss``). Adam with
    weight decay, cosine learning-rate schedule stepped once per epoch
    (horizon = epochs; the public code stepped it per batch: docs/method.md,
    "What differs from the authors' public code", 4). Selection: eval-split
    top-1 (``classifier_metrics``). Subclasses change :meth:`student_inputs`
    (Module 3's mixup) and :meth:`epoch_order` (its curriculum).
    """

    best = ("student",)

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
        pool: Any = None,
    ):
        """``pool``: a ``method.unlabelled.PoolTerm`` adding the unlabelled images' terms to every step, or None."""
        self.name = name
        self.pool = pool
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

    def pool_fraction(self, epoch: int) -> float:
        """The share of the unlabelled pool drawn from this epoch (Module 3's curriculum narrows it)."""
        return 1.0

    def pool_kd_view(self, views: Any, epoch: int) -> torch.Tensor | None:
        """The normalised pool images the pool's KD term reads when they are not the weak views (Module 3's
        mixtures), or None."""
        return None

    # ---- Stage protocol ---------------------------------------------------
    def train_mode(self) -> None:
        self.student.train()

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int, float]]:
        gen = epoch_generator(self.seed, epoch)
        order = self.epoch_order(epoch, gen)
        pool_gen = self.pool.generator(epoch) if self.pool is not None else None
        for x, y, weight in labelled_batches(
            self.train_x, self.train_y, order, self.batch_size, gen, self.device, self.augment
        ):
            views = (self.pool.views(len(x), pool_gen, self.device, self.pool_fraction(epoch))
                     if self.pool is not None else None)
            yield x, y, epoch, weight, views

    def train_step(self, batch: tuple[Any, ...]) -> dict[str, torch.Tensor]:
        x, y, epoch, weight, views = batch
        with torch.no_grad(), self.precision.autocast():
            inputs, targets = self.student_inputs(x, y, epoch)
            teacher_logits = self.teacher(inputs).float() if self.teacher is not None else None
            kd_view = self.pool_kd_view(views, epoch) if views is not None else None
            pool_teacher = (self.pool.teacher_logits(views.weak if kd_view is None else kd_view)
                            if views is not None else None)
        n = len(inputs)
        with self.precision.autocast():
            # one forward over [batch; weak; strong (; mixed)]: BatchNorm sees the whole step, as in FixMatch
            parts = [inputs] if views is None else [inputs, views.weak, views.strong]
            logits = self.train_student(torch.cat(parts + ([kd_view] if kd_view is not None else []))).float()
        loss = self.loss(logits[:n], teacher_logits, targets, self.ce_share(len(x), len(targets), epoch))
        out = {"loss": loss.detach()}
        if views is not None:
            m = len(views.weak)
            weak_logits, strong_logits = logits[n:n + m], logits[n + m:n + 2 * m]
            kd_logits = logits[n + 2 * m:] if kd_view is not None else None
            pool_loss, stats = self.pool.loss(weak_logits, strong_logits, pool_teacher, views.idx, kd_logits)
            loss = loss + pool_loss
            out |= stats
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward_step(weighted(loss, weight), self.optimizer)
        return out

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
        metrics = classifier_metrics(self.student, self.eval_x, self.eval_y, self.mean, self.std)
        if self.pool is not None:  # the pool's kd_gate reads it next epoch
            right = None
            if self.pool.needs_eval_right:
                from augkd_edge.evaluate import predict_logits

                right = predict_logits(self.student, self.eval_x, self.mean, self.std).argmax(1).cpu() == self.eval_y.cpu()
            self.pool.observe(metrics["eval_top1"], right)
        return metrics

    def parts(self) -> dict[str, Any]:
        return {"student": self.student, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "scaler": self.precision, **({"pool": self.pool} if self.pool is not None else {})}
