"""The project's one atomic file write: a temp file beside the target, renamed into place.

An interrupted or failed write (kill, disk full) never leaves a half-written
file where a good one used to be. Checkpoints (``augkd_edge.checkpoint``),
export files, engines and latency reports all go through :func:`atomic_write`.
Standard library only, so it is copied to a Jetson board with ``trt_runner.py``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable

try:  # inside the augkd_edge package: a failed write is a user-facing WriteError (still an OSError)
    from augkd_edge.errors import WriteError
except ImportError:  # loose copy on a board
    WriteError = OSError  # type: ignore[assignment,misc]


def _umask_mode() -> int:
    """The mode a plain open() would give: mkstemp's 0600 would hide results from other users."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, mode: str, write: Callable[[IO], None]) -> Path:
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
    """JSON / Markdown / HTML results, atomically."""
    return atomic_write(path, "w", lambda fh: fh.write(text))


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> Path:
    """Binary results (TensorRT engines, timing caches), atomically."""
    return atomic_write(path, "wb", lambda fh: fh.write(data))
