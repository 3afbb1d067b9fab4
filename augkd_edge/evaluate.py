"""Evaluation: logits through the one normalisation path, top-k accuracy, selection metrics, BN statistics.

Every stage, the teacher, the pipeline and the health checks evaluate through
these functions, so a number means the same wherever it is printed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from augkd_edge.batching import chunks
from augkd_edge.data import normalize


def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
) -> torch.Tensor:
    """Logits for [0,1] images through the one normalisation path the model trained with."""
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


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 3, 5)) -> dict[str, float]:
    """Top-k hit rates by the export's one rule (``augkd_edge.export.latency.topk_accuracy``), so training
    reports and export checks count a hit the same way."""
    from augkd_edge.export.latency import topk_accuracy as rule

    return rule(logits.detach().float().cpu().numpy(), labels.cpu().numpy(), ks)


def evaluate_classifier(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
    with_loss: bool = False,
) -> dict[str, float]:
    """Top-1/3/5 as fractions in [0, 1], in eval mode, without gradients; with ``with_loss`` also the mean CE
    (``loss``), which orders students of equal top-1 on a small eval split (``augkd_edge.auto.choose``)."""
    logits = predict_logits(model, images, mean, std, batch_size)
    out = topk_accuracy(logits, labels)
    if with_loss:  # rounded: two runs of one seed agree in top-1 but their CE in the 6th digit only (float noise)
        ce = float(F.cross_entropy(logits, labels.to(logits.device))) if len(labels) else float("nan")
        out["loss"] = round(ce, 4)
    return out


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
    sees real ones): docs/decisions.md, "BatchNorm statistics recomputed before evaluation".
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
    """Top-1/3/5 and CE through :func:`predict_logits`, plus ``select``.

    ``select`` = 1 - top1, ties broken by the CE loss: the loss enters scaled
    below one sample's worth of accuracy (1 / n), so it only orders epochs
    with equal top-1 (frequent on small eval splits).
    """
    logits = predict_logits(model, images, mean, std)
    labels = labels.to(logits.device)
    acc = topk_accuracy(logits, labels)
    loss = float(F.cross_entropy(logits, labels)) if len(labels) else float("nan")
    tie = min(loss, 50.0) / (100.0 * max(len(labels), 1)) if math.isfinite(loss) else 0.0
    out = {f"{prefix}{k}": v for k, v in acc.items()}
    out[f"{prefix}loss"] = loss
    out["select"] = 1.0 - acc["top1"] + tie
    return out
