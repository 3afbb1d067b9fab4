"""Seeded batching shared by every stage.

Every stage draws its epoch's order and augmentation from a generator seeded by
(seed, epoch), never from the global RNG, so a resumed run replays exactly
(``engine.Stage``). Under torchrun each rank keeps its share of the whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from augkd_edge.data.augment import Augment
from augkd_edge.distributed import current

_SEED_STRIDE = 100_003


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
