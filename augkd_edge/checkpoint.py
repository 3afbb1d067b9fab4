"""Atomic file writes (torch-free: the export side and the Jetson runner use them too).

Writes go to a temporary file in the same folder and are renamed into place, so
an interrupted or failed write (kill, disk full) never leaves a half-written
file where a good one used to be. Torch files (checkpoints, models) are written
and read through ``torch_files.py`` on top of this.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable

from augkd_edge.errors import WriteError


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


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (JSON / Markdown results) so that ``path`` is either old or new, never partial."""
    return _atomic_write(path, "w", lambda fh: fh.write(text))
