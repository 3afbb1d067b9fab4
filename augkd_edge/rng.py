"""Capture and restore every RNG state (torch, CUDA, numpy, Python) as checkpointable plain data."""

from __future__ import annotations

import random
from typing import Any


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
