"""``export_student``: a trained student's model file (or run folder) -> deployable files, each checked.

The Python API behind ``augkd-edge export``. This module does the part that
needs augkd-edge's training side (loading the model file safely, rebuilding
the student-domain splits it recorded: ``augkd_edge.rundir``) and hands an
``nn.Module`` and arrays to ``augkd_edge.export.api``, which does every export
step and check and documents ``export.json``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from augkd_edge.export.api import ExportCheckFailed, ExportOptions, StudentToExport, export_student_model, silent

__all__ = ["ExportCheckFailed", "ExportOptions", "export_student"]


def export_student(model_file: str | Path, out_dir: str | Path, *, input_size: int | None = None,
                   split: str = "test", echo: Callable[..., None] = silent, **options: Any) -> dict[str, Any]:
    """Export the student in ``model_file`` (a ``student.pt``/``teacher.pt`` or a run folder) into ``out_dir``.

    ``options`` are the fields of :class:`ExportOptions` (``onnx=True``, ``int8``, ``trt``,
    ``fp16``, ``batch``, ``atol``, ``rtol``, ``max_drop``, ``force``, ...; defaults as the
    CLI's). ``input_size`` exports at another square resolution than the model was trained
    at; ``split`` is the recorded split the checks run on (``"test"``, or ``"eval"`` for a
    teacher run). ``echo(message, err=False)`` receives the progress lines.

    Returns the ``export.json`` record. Raises ``UserError`` for a bad path, file or
    option, and :class:`ExportCheckFailed` when a check fails (``export.json`` is
    written anyway).
    """
    from augkd_edge._version import __version__
    from augkd_edge.checkpoint import check_writable_dir
    from augkd_edge.export.tensorrt import sha256_file
    from augkd_edge.models.loading import load_model_file
    from augkd_edge.rundir import resolve_model_path, split_arrays

    opts = ExportOptions(**options)
    check_writable_dir(out_dir, "--out")
    model_path = resolve_model_path(model_file)
    model, meta = load_model_file(model_path)
    if input_size is not None and input_size != meta.input_size:
        echo(f"note: exporting at {input_size}px; the model was trained at {meta.input_size}px", err=True)
        meta = dataclasses.replace(meta, input_size=input_size)
    check_x, check_y = split_arrays(meta, split)
    student = StudentToExport(
        model=model, input_size=meta.input_size, mean=meta.mean, std=meta.std, class_names=meta.class_names,
        check_images=check_x, check_labels=check_y, split=split,
        calibration_images=lambda: split_arrays(meta, "train")[0],  # calibration never sees the check split
        source={"model_file": str(model_path), "sha256": sha256_file(model_path), "arch": meta.arch,
                "num_classes": meta.num_classes, "data": meta.extra.get("data")},
    )
    return export_student_model(student, out_dir, opts, echo=echo, package_version=__version__)
