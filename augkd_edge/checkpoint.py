"""Atomic checkpoint files and safe loading.

Checkpoints and teachers may come from strangers, so every load goes through
``torch.load(..., weights_only=True)``: a file that needs arbitrary unpickling
is refused instead of executed. Writes go to a temporary file in the same folder
and are renamed into place, so an interrupted or failed write (kill, disk full)
never leaves a half-written checkpoint where a good one used to be.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from augkd_edge.errors import UserError, WriteError
# the one atomic write lives in the torch-free export library (the Jetson runner writes reports with it too)
from augkd_edge.export.atomic import atomic_write, write_text_atomic

__all__ = ["check_writable_dir", "is_safetensors", "load_safe", "load_state_file", "save_atomic", "write_text_atomic"]


def check_writable_dir(folder: str | os.PathLike, what: str) -> None:
    """WriteError when ``folder`` cannot be made or written (a file on the way, no permission, read-only).

    Leaves nothing behind: the probe is an empty folder made and removed in the nearest existing ancestor.

    ``what`` names the option in the message, e.g. ``--out``.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise WriteError(f"{what} {folder}: is a file, not a folder; choose a folder path.")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise WriteError(f"{what} {folder}: {existing} is a file, so no folder can be made under it; "
                         f"choose another path.")
    try:  # os.access says yes to root everywhere; a folder made and removed at once is the real answer
        os.rmdir(tempfile.mkdtemp(prefix=".augkd-edge-probe-", dir=existing))
    except OSError as exc:
        raise WriteError(f"{what} {folder}: cannot write in {existing} ({exc.strerror}); choose a folder you can "
                         f"write to.") from None


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` with ``torch.save`` so that ``path`` is either old or new, never partial."""
    import torch

    return atomic_write(path, "wb", lambda fh: torch.save(obj, fh))


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


def is_safetensors(path: str | os.PathLike) -> bool:
    """A ``.safetensors`` file by name, or by its header (8-byte little-endian length, then a JSON object)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def load_state_file(path: str | os.PathLike) -> Any:
    """A state_dict (or other torch data) from a ``.safetensors`` file or a torch file, running no code.

    safetensors holds tensors only, so it needs no unpickling at all; other files go through :func:`load_safe`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; check the path you gave.")
    if not is_safetensors(path):
        return load_safe(path)
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise UserError(f"{path}: reading .safetensors needs the safetensors package: pip install safetensors") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) for bad files
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a readable safetensors file (truncated or corrupt?): {first}") from None
