"""The ``augkd-edge`` command line: thin click commands over the library.

Each subcommand lives in its own module of this package and only parses,
validates and calls. User mistakes (``UserError``) become one line on stderr and
exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import errno

import click

from augkd_edge import __version__
from augkd_edge.errors import BadImageWarning, UserError


# OSErrors that are the file system's answer to a path the user chose, not bugs.
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
                errno.ENAMETOOLONG, errno.ELOOP}


class _Group(click.Group):
    """Turns UserError, and OSErrors about a path (permission, read-only, disk full), into one line and exit 2."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except UserError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"augkd-edge: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:
            if exc.errno not in _PATH_ERRNOS or (ctx.obj and ctx.obj.get("debug")):
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"augkd-edge: error: {where}{exc.strerror}; check the path, its permissions and the free "
                       f"disk space.", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="augkd-edge")
@click.option("--debug", is_flag=True, help="Show full tracebacks for user errors too.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """augkd-edge: distill a small student from a teacher trained on another domain
    (AuG-KD, ICLR 2024), export it to ONNX / TensorRT and measure its latency."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    _clean_skip_warnings()


def _clean_skip_warnings() -> None:
    """Skipped-file warnings as one line each (``augkd-edge: warning: ...``), not Python's two-line format."""
    import warnings

    shown = warnings.showwarning
    if getattr(shown, "_augkd_edge", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if issubclass(category, BadImageWarning):
            click.echo(f"augkd-edge: warning: {message}", err=True)
        else:
            shown(message, category, filename, lineno, file, line)

    show._augkd_edge = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def _register() -> None:
    # Imported here, not at the top: each module imports ``main``'s package.
    from augkd_edge.cli import bench, distill, export, sweep, teacher

    for module in (teacher, distill, export, bench, sweep):
        main.add_command(module.command)


_register()
