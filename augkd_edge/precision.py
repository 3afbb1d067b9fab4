"""Mixed precision (``--amp bf16|fp16|off``): autocast for forwards, grad scaling for fp16.

Networks run under ``torch.autocast``; every loss is computed on float32
logits (the stages call ``.float()`` on them), so the distillation terms,
whose temperature-scaled softmaxes are the precision-sensitive part, keep
full precision. fp16 has a narrow exponent range, so its gradients are
scaled (``torch.amp.GradScaler``); the scaler's state is part of each
stage's checkpoint so a resumed run continues with the same scale. bf16 has
float32's range and needs no scaler. ``off`` is exactly the float32 path.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from augkd_edge.config import AMP_MODES
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """One stage's autocast settings and gradient scaler."""

    def __init__(self, mode: str = "off", device: torch.device | str = "cpu"):
        if mode not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
        self.mode = mode
        self.device_type = torch.device(device).type
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=mode == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.mode == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=_DTYPES[self.mode])

    def backward_step(self, loss: torch.Tensor, *optimizers: torch.optim.Optimizer) -> None:
        """Backward ``loss`` and step ``optimizers`` (zeroing their gradients is the caller's)."""
        self.scaler.scale(loss).backward()
        for opt in optimizers:
            self.scaler.step(opt)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.scaler.load_state_dict(state)
