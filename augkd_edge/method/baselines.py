"""The baselines AuG-KD is compared with, on the same data, splits, student init and evaluation.

- ``no-kd``: the student trained with CE on the labelled student-domain images alone;
- ``kd``: ``u * CE + (1 - u) * tau^2 * KL(T || S)`` on the student domain, the
  teacher's logits on the same normalised batch (the same ``distill_loss`` as Module 3);
- ``dfkd-finetune``: the Module 1 student (the pipeline passes it in as
  ``student``) fine-tuned with CE on the student domain;
- ``dfkd``: the Module 1 student evaluated as is; it trains nothing, so it has no stage;
- with ``--unlabelled``: ``self-train`` (no-kd + FixMatch consistency on the pool: self-training without a
  teacher) and ``kd-unlabelled`` (CE on the labelled images + the teacher's soft labels on the pool at full
  weight: Hinton's transfer set); their pool terms are ``method/unlabelled.py``'s.

All are :class:`~augkd_edge.student_stage.StudentStage` with Module 3's
recipe (``MixupConfig``: epochs, lr, weight decay, batch size, u, tau, BN
recompute), so a difference in results comes from the method, not the recipe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from augkd_edge.config import METHODS, MixupConfig
from augkd_edge.data import Augment
from augkd_edge.student_stage import StudentStage, recipe


def build_baseline_stage(
    method: str,
    student: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    eval_x: torch.Tensor,
    eval_y: torch.Tensor,
    cfg: MixupConfig,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int,
    teacher: nn.Module | None = None,
    augment: Augment | None = None,
    amp: str = "off",
    pool: Any = None,
) -> StudentStage:
    """The training stage of baseline ``method`` (``config.METHODS``' final stage ``"baseline"``; ``dfkd`` has none).

    ``pool``: the unlabelled images' terms (``method.unlabelled.PoolTerm``) of ``self-train`` / ``kd-unlabelled``.
    """
    spec = METHODS.get(method)
    if spec is None or spec.final != "baseline":
        names = [m.name for m in METHODS.values() if m.final == "baseline"]
        raise ValueError(f"{method!r} has no baseline stage; use one of {', '.join(names)}")
    if spec.kd and teacher is None:
        raise ValueError(f"the {method} baseline needs the teacher")
    if spec.needs_pool and pool is None:
        raise ValueError(f"the {method} baseline needs the unlabelled images' pool term")
    return StudentStage(spec.stage_name, student, train_x, train_y, eval_x, eval_y, mean=mean, std=std, seed=seed,
                        augment=augment, teacher=teacher if spec.kd else None, u=cfg.u if spec.kd else 1.0, amp=amp,
                        pool=pool, **recipe(cfg))
