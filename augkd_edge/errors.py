"""User-facing errors.

A ``UserError`` is a mistake the user can fix (a bad path, a corrupt file, an
impossible option). The CLI turns it into one line on stderr and exit code 2,
without a traceback (``--debug`` shows it). Bugs stay ordinary exceptions.
"""


class UserError(Exception):
    """A problem with the user's input; the message names the file and the fix."""

    exit_code = 2


class BadImageWarning(UserWarning):
    """An image file (or a folder link) was skipped while loading a folder domain.

    The message is one line: the path and why. The CLI prints it as
    ``augkd-edge: warning: ...`` without Python's source-line echo.
    """


class WriteError(UserError, OSError):
    """A file or folder could not be written (no permission, read-only, disk full, a file in the way).

    Still an ``OSError`` for callers that catch those; the CLI shows it as one line, exit 2.
    """


class ExportCheckFailed(UserError):
    """A measured export check failed (parity, the INT8 gate, TensorRT support): the files exist but must not be
    deployed. Exit code 3."""

    exit_code = 3
