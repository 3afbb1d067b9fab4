"""Data-parallel training under ``torchrun`` (PyTorch DDP; NCCL on GPUs, gloo on CPU).

Every rank runs the whole pipeline on identical inputs. Each *batch* is the
batch a single process would draw (same seeded order, same augmentation, same
noise), and rank r trains on its contiguous share of it. The loss of a share
is weighted by ``world * n_rank / n_batch`` (:meth:`Dist.weight`), so DDP's
average of the ranks' gradients is exactly the gradient of the whole batch's
mean loss. What still differs from one process (documented in the README):

- BatchNorm in train mode normalises each rank's share with its own batch
  statistics (no SyncBatchNorm), and the running statistics follow rank 0's
  (DDP broadcasts buffers from rank 0 before each forward, and
  :meth:`Dist.sync_buffers` before each evaluation);
- Module 1's batch-level terms (the class-balance term over the batch's mean
  prediction and the BatchNorm-statistics loss) are computed per share;
- floating-point summation order (all-reduce), so results agree to rounding,
  not bit for bit.

Rank 0 alone writes files, logs and draws progress bars; every rank evaluates
the same (synchronised) models on the same eval data, so all ranks make the
same best-epoch choices without extra communication.

The state is process-global, like ``torch.distributed``'s own: :func:`current`
returns the context set up by :func:`session`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from augkd_edge.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclasses.dataclass(frozen=True)
class Dist:
    """Where this process sits in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: "nn.Module") -> "nn.Module":
        """DDP around a module that trains (the module itself in a single process).

        Keep using the bare module for frozen forwards, evaluation and
        ``state_dict`` (no ``module.`` prefixes in checkpoints).
        """
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device = next(module.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def bounds(self, n: int) -> tuple[int, int]:
        """[start, stop) of this rank's contiguous share of ``n`` items (sizes differ by at most 1)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def shard(self, tensor: "torch.Tensor", dim: int = 0) -> "torch.Tensor":
        """This rank's share of a batch along ``dim``."""
        if not self.enabled:
            return tensor
        start, stop = self.bounds(tensor.shape[dim])
        return tensor.narrow(dim, start, stop - start)

    def weight(self, n: int) -> float:
        """Loss weight of this rank's share of an ``n``-item batch: 1.0 in a single process."""
        if not self.enabled:
            return 1.0
        start, stop = self.bounds(n)
        return self.world * (stop - start) / n

    def check_batch(self, n: int, what: str) -> None:
        """Refuse batches whose shares would be too small for BatchNorm in train mode."""
        if self.enabled and n < 2 * self.world:
            raise UserError(
                f"{what}: a batch of {n} cannot be shared by {self.world} processes (each needs at least 2 "
                f"images for BatchNorm); use a larger batch or fewer processes."
            )

    def mean(self, values: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
        """Average scalar tensors over ranks (one collective for the whole dict)."""
        if not self.enabled or not values:
            return values
        import torch
        import torch.distributed as dist

        keys = sorted(values)
        stacked = torch.stack([values[k].detach().float() for k in keys])
        dist.all_reduce(stacked)
        stacked /= self.world
        return dict(zip(keys, stacked.unbind()))

    def sync_buffers(self, *modules: "nn.Module | None") -> None:
        """Copy rank 0's buffers (BatchNorm statistics) to every rank."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for module in modules:
            if module is None:
                continue
            for buf in module.buffers():
                dist.broadcast(buf, src=0)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (e.g. RNG states), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


_SINGLE = Dist()
_current = _SINGLE


def current() -> Dist:
    """The job context of this process (rank 0 of 1 outside torchrun)."""
    return _current


def launched_by_torchrun() -> bool:
    """True in a rank that torchrun started, a job of one process included.

    ``torchrun --nproc-per-node 1`` still joins a process group (NCCL on a GPU),
    so a one-GPU machine shows that NCCL initialises and tears down cleanly
    (``benchmarks/device_check.py``); torchrun marks its ranks with
    ``TORCHELASTIC_RUN_ID`` (what ``torch.distributed.is_torchelastic_launched``
    reads). ``WORLD_SIZE`` > 1 from another launcher counts too.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "TORCHELASTIC_RUN_ID" in os.environ


def device_for(name: str) -> "torch.device":
    """The device of this rank: ``cuda:LOCAL_RANK`` for CUDA jobs under torchrun."""
    import torch

    from augkd_edge.device import select_device

    device = select_device(name)
    if launched_by_torchrun() and device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs are visible; "
                f"use --nproc-per-node {torch.cuda.device_count()} or fewer."
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def session(device: "torch.device") -> Iterator[Dist]:
    """Join the torchrun job (if any) for the duration of a command, then leave it cleanly.

    Leaving frees collected objects and waits at a barrier before
    ``destroy_process_group``: without that, gloo jobs aborted at exit in
    about 30% of runs (a rank tearing down while another still held DDP
    buckets / sent its last messages).
    """
    global _current
    if not launched_by_torchrun():
        yield _SINGLE
        return
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    _current = Dist(rank=dist.get_rank(), world=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")), backend=backend)
    ok = False
    try:
        yield _current
        ok = True
    finally:
        gc.collect()
        if ok:
            dist.barrier()
        dist.destroy_process_group()
        _current = _SINGLE
