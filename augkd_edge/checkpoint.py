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
from typing import IO, Any, Callable

from augkd_edge.errors import UserError, WriteError


def _umask_mode() -> int:
    """The mode a plain open() would give: mkstemp's 0600 would hide results from other users."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


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


def _atomic_write(path: str | os.PathLike, mode: str, write: Callable[[IO], None]) -> Path:
    """Write through ``write(fh)`` into a temp file beside ``path``, then rename it into place.

    An OSError (disk full, no permission) becomes a WriteError naming ``path``; the old file stays.
    """
    path = Path(path)
    try:
        return _write_replace(path, mode, write)
    except WriteError:
        raise
    except OSError as exc:
        kept = "the previous version is kept" if path.exists() else "nothing was written"
        raise WriteError(f"{path}: cannot write it ({exc.strerror or exc}); {kept}. Free disk space "
                         f"or fix the permissions, or choose another path.") from exc


def _write_replace(path: Path, mode: str, write: Callable[[IO], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` with ``torch.save`` so that ``path`` is either old or new, never partial."""
    import torch

    return _atomic_write(path, "wb", lambda fh: torch.save(obj, fh))


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Same guarantee as :func:`save_atomic` for JSON / Markdown results."""
    return _atomic_write(path, "w", lambda fh: fh.write(text))


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> Path:
    """Same guarantee as :func:`save_atomic` for binary results (TensorRT engines, timing caches)."""
    return _atomic_write(path, "wb", lambda fh: fh.write(data))


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
