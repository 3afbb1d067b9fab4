"""Setting networks up for a stage: frozen for good, parameter gradients off for a while, CPU memory layout."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def freeze(*modules: nn.Module | None) -> None:
    """Eval mode and no parameter gradients, for good (frozen nets of a stage)."""
    for module in modules:
        if module is not None:
            module.requires_grad_(False)
            module.eval()


def channels_last_on_cpu(device: torch.device, *modules: nn.Module | None) -> None:
    """Store conv weights as NHWC on CPU, where oneDNN runs them faster (trained nets; frozen teachers
    did not gain: docs/decisions.md, "Channels-last on CPU"). Same math, other memory layout; on GPUs
    the choice is left to the caller.
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
