"""Checks before a distill run writes anything: the run folder, its config and data, the inputs.

A run refuses an ``--out`` that holds another run (or the same run under a
changed configuration), data other than its splits were drawn from, and
inputs that cannot work (class counts, weights files, the teacher file), so
that a mistake fails before the first file is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from augkd_edge.errors import UserError

if TYPE_CHECKING:
    from torch import nn

    from augkd_edge.config import DistillConfig
    from augkd_edge.data import Domain

# Where a run is and how it runs, not what it computes: may change on resume.
RUN_ONLY_KEYS = ("out", "device", "tensorboard")


def _run_started(out_dir: Path) -> bool:
    """Whether a stage of the run in ``out_dir`` has started (a checkpoint, a metrics line or results exist)."""
    metrics = out_dir / "metrics.jsonl"
    ckpt = out_dir / "ckpt"
    return ((metrics.exists() and metrics.stat().st_size > 0) or (out_dir / "results.json").exists()
            or (ckpt.is_dir() and any(ckpt.iterdir())))


def check_run_dir(cfg: "DistillConfig", out_dir: Path, resume: bool) -> None:
    """Refuse an --out that cannot take this run, before anything is written.

    A folder whose config.json was written but in which no stage started (the
    run failed on its inputs) is reused as if empty, with or without --resume.
    """
    from augkd_edge.checkpoint import check_writable_dir
    from augkd_edge.config import DistillConfig

    check_writable_dir(out_dir, "--out")
    if cfg.tensorboard is not None:
        from augkd_edge.tensorboard_log import _summary_writer

        _summary_writer()  # the package is there
        check_writable_dir(Path(cfg.tensorboard).expanduser(), "--tensorboard")
    cfg_path = out_dir / "config.json"
    if not cfg_path.exists() or not _run_started(out_dir):
        if resume and not cfg_path.exists():
            raise UserError(f"--resume: {out_dir} holds no run (no config.json); check --out, or drop --resume "
                            f"to start a new run there.")
        return
    if not resume:
        raise UserError(f"{out_dir} already holds a run; add --resume to continue it or choose another --out.")
    old = DistillConfig.from_file(cfg_path)
    diffs = [k for k in cfg.diff(old) if k not in RUN_ONLY_KEYS]
    if diffs:
        raise UserError(
            f"{cfg_path}: cannot resume with a changed configuration ({', '.join(diffs)} differ); "
            f"use the original options or another --out."
        )


def recorded_data(out_dir: Path, group: str) -> dict | None:
    """The fingerprint splits.json recorded for ``group`` ("student", "unlabelled") of a started run, or None."""
    path = out_dir / "splits.json"
    if not _run_started(out_dir) or not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("data", {}).get(group)
    except (OSError, ValueError, AttributeError):
        return None  # an older or damaged split file: nothing recorded to compare with


def check_same_data(out_dir: Path, student_dom: "Domain") -> None:
    """A started run continues only on the image list its splits were drawn from (splits.json's fingerprint)."""
    from augkd_edge.data import check_fingerprint

    check_fingerprint(recorded_data(out_dir, "student"), student_dom)


def prepare_run_dir(cfg: "DistillConfig", out_dir: Path, resume: bool) -> None:
    """Write config.json, or check it against the existing run when resuming.

    Under torchrun every rank checks before rank 0 writes (a rank checking
    after the write would see "a run already exists").
    """
    from augkd_edge.checkpoint import write_text_atomic
    from augkd_edge.distributed import current

    check_run_dir(cfg, out_dir, resume)
    dist = current()
    dist.barrier()
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cfg.to_json(), out_dir / "config.json")
    dist.barrier()


def check_inputs(cfg: "DistillConfig", student_dom: "Domain", cache_dir: Path) -> "nn.Module | None":
    """Everything a run needs that can be checked before it writes: names, class counts, the cache, the teacher.

    Returns the user's teacher (``cfg.teacher_file``) loaded and probed, or None.
    """
    from augkd_edge.checkpoint import check_writable_dir
    from augkd_edge.models.zoo import model_builder

    if len(student_dom.classes) < 2:
        raise UserError(f"student data {cfg.student_data!r} has one class ({student_dom.classes[0]!r}); "
                        f"a classifier needs at least 2 class folders.")
    model_builder(cfg.student_arch)
    check_weights(cfg.student_arch, cfg.student_weights, len(student_dom.classes), "--student-weights")
    if cfg.teacher_file:
        return load_teacher_file(cfg, student_dom.classes)
    model_builder(cfg.teacher_arch)
    check_weights(cfg.teacher_arch, cfg.teacher_weights, len(student_dom.classes), "--teacher-weights")
    check_writable_dir(cache_dir, "--cache-dir")
    return None


def check_weights(arch: str, spec: str | None, num_classes: int, flag: str) -> None:
    """Load ``--*-weights`` into a throwaway model, so a missing or unfitting file fails before anything is written."""
    if spec:
        from augkd_edge.models.weights import initialise
        from augkd_edge.models.zoo import build_classifier

        initialise(build_classifier(arch, num_classes), arch, spec, flag)


def load_teacher_file(cfg: "DistillConfig", class_names: list[str]) -> "nn.Module":
    """The user's teacher, checked on the run's input size, class count and (when recorded) class names."""
    from augkd_edge.models.loading import load_teacher

    return load_teacher(cfg.teacher_file, cfg.teacher_arch, len(class_names), input_size=cfg.input_size,
                        class_names=list(class_names))
