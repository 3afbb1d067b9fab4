"""Torch files: atomic checkpoint writes and safe loading.

Checkpoints and teachers may come from strangers, so every load goes through
``torch.load(..., weights_only=True)``: a file that needs arbitrary unpickling
is refused instead of executed. Writes are atomic (``checkpoint.py``), so an
interrupted or failed write never leaves a half-written checkpoint where a good
one used to be.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from augkd_edge.checkpoint import _atomic_write
from augkd_edge.errors import UserError


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` with ``torch.save`` so that ``path`` is either old or new, never partial."""
    import torch

    return _atomic_write(path, "wb", lambda fh: torch.save(obj, fh))


def load_safe(path: str | os.PathLike, map_location: str = "cpu") -> Any:
    """Load a torch file without running code from it.

    Raises UserError (naming the file) when it is missing, truncated, not a
    torch file, or carries a pickle payload that ``weights_only`` refuses.
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; check the path you gave.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"{path}: refused to load: the file holds Python objects beyond tensors and plain "
            f"data, and unpickling them could run code ({str(exc).splitlines()[0]}). Save a "
            f"state_dict (torch.save(model.state_dict(), ...)) or a TorchScript / torch.export "
            f"archive instead."
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
