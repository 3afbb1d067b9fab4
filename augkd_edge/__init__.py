"""augkd-edge: out-of-domain knowledge distillation (AuG-KD) and edge export.

Importing the package must stay cheap and torch-free: the Jetson runner in
``augkd_edge.export.trt_runner`` is imported on boards without PyTorch, so heavy
imports live inside the functions that need them.

Public API (what ``benchmarks/`` uses, like any user):

- :func:`distill`: one ``augkd-edge distill`` run from Python;
- :func:`training_stage`: one AuG-KD module as the engine stage the pipeline trains
  (to measure or drive a training step);
- :func:`export_student`: one ``augkd-edge export`` run from Python (named so because
  ``augkd_edge.export`` is the export subpackage itself).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from pathlib import Path

from augkd_edge._version import __version__

__all__ = ["__version__", "distill", "export_student", "training_stage"]


def distill(
    config: Any = None,
    out: "str | Path | None" = None,
    *,
    resume: bool = False,
    cache_dir: "str | Path" = "~/.cache/augkd-edge",
    shared_dir: "str | Path | None" = None,
    progress: bool = False,
    echo: Callable[[str], None] | None = print,
    checkpoint_every: int = 0,
    deterministic: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Distill a student (AuG-KD, or a baseline) into the run folder ``out``; returns its results.json content.

    ``config``: a ``DistillConfig``, a dict of options shaped like a run's config.json,
    the path of such a JSON file, or None (the ``quick`` preset). ``options`` override
    it: top-level keys (``method="kd"``, ``seed=1``, ``preset="paper"``) and sections as
    dicts (``mixup={"epochs": 40}``). ``out``: the run folder (default: the config's
    ``out``). ``resume`` continues the run in ``out``; ``shared_dir`` lets several
    methods of one seed share the teacher-side stages (Modules 1 and 2), as the
    accuracy benchmark does. The other arguments are those of ``augkd-edge distill``.
    ``echo`` receives the progress lines (None: silent).

    Example::

        import augkd_edge
        results = augkd_edge.distill(method="augkd", seed=0, out="runs/mine")
        print(results["test"]["top1"])
    """
    from augkd_edge.api import run

    return run(config, out, resume=resume, cache_dir=cache_dir, shared_dir=shared_dir, progress=progress,
               echo=echo, checkpoint_every=checkpoint_every, deterministic=deterministic, options=options)


def training_stage(module: str, config: Any = None, **parts: Any) -> Any:
    """One AuG-KD module as the engine stage the pipeline trains: ``"data_free"``, ``"anchor"`` or ``"mixup"``.

    ``config``: as for :func:`distill` (its ``data_free``, ``anchor`` or ``mixup``
    section is used). ``parts``: the networks (``teacher``, ``student``, ``generator``,
    ``encoder``, ``anchor``) and, for Modules 2 and 3, ``images`` / ``labels``
    (labelled student-domain training images in [0, 1]), ``eval_images`` /
    ``eval_labels``, ``augment`` (a domain kind, default ``"digits"``), ``margin``
    (Module 2's energy margin; default the teacher's mean energy on ``images``),
    ``method`` (Module 3's method, default ``"augkd"``), ``trust`` and ``seed``.
    The stage has ``train_mode()``, ``batches(epoch)``, ``train_step(batch)``,
    ``evaluate()``; ``engine.fit`` trains it.
    """
    from augkd_edge.api import stage

    return stage(module, config, **parts)


def export_student(model_file: "str | Path", out_dir: "str | Path", **options: Any) -> dict[str, Any]:
    """Export a trained student (a run folder or its ``student.pt``) into ``out_dir``; returns export.json's content.

    ``options``: ``input_size``, ``split``, ``echo`` and the fields of
    ``augkd_edge.export.api.ExportOptions`` (``onnx=True``, ``int8``, ``int8_for``, ``trt``,
    ``fp16``, ``batch``, ``atol``, ``rtol``, ``max_drop``, ``force``, ...), defaults as the CLI's.
    Raises ``UserError`` for a bad path or option and ``ExportCheckFailed`` when a check fails.

    Example::

        record = augkd_edge.export_student("runs/mine", "export-mine", int8=True)
        print(record["parity"]["passed"], record["int8"]["speed_here"]["speedup"])
    """
    from augkd_edge.deploy import export_student as run

    return run(model_file, out_dir, **options)
