"""What ``augkd_edge.distill`` and ``augkd_edge.training_stage`` do (documented in ``augkd_edge/__init__.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from augkd_edge.config import DistillConfig
from augkd_edge.errors import UserError


def config_of(config: Any, options: dict[str, Any]) -> DistillConfig:
    """A validated ``DistillConfig`` from a config, a dict, a JSON file or None, with ``options`` on top."""
    if config is None:
        data: dict[str, Any] = {}
    elif isinstance(config, DistillConfig):
        data = config.to_dict()
    elif isinstance(config, dict):
        data = json.loads(json.dumps(config))  # a deep copy: the caller's dict stays as it was
    else:
        try:
            data = json.loads(Path(config).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{config}: cannot read a JSON config ({exc}).") from exc
    for key, value in options.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return DistillConfig.from_dict(data, source="augkd_edge.distill")


def run(config: Any, out: str | Path | None, *, resume: bool, cache_dir: str | Path, shared_dir: str | Path | None,
        progress: bool, echo: Callable[[str], None] | None, checkpoint_every: int, deterministic: bool,
        options: dict[str, Any]) -> dict[str, Any]:
    from augkd_edge import distributed
    from augkd_edge.device import set_deterministic
    from augkd_edge.pipeline import run_distill, silent

    cfg = config_of(config, options)
    out = out if out is not None else cfg.out
    if out is None:
        raise UserError("augkd_edge.distill: give out, the run folder.")
    cfg.out = str(out)
    set_deterministic(deterministic)
    with distributed.session(distributed.device_for(cfg.device)):
        return run_distill(cfg, Path(out), resume=resume, progress=progress, cache_dir=Path(cache_dir).expanduser(),
                           shared_dir=shared_dir, echo=echo or silent, checkpoint_every=checkpoint_every)


def stage(module: str, config: Any = None, *, teacher: Any, student: Any = None, generator: Any = None,
          encoder: Any = None, anchor: Any = None, images: Any = None, labels: Any = None, eval_images: Any = None,
          eval_labels: Any = None, augment: str = "digits", margin: float | None = None, method: str = "augkd",
          trust: tuple[float, float] | None = None, seed: int = 0) -> Any:
    from augkd_edge.data import IMAGENET_MEAN, IMAGENET_STD, make_augment

    cfg = config_of(config, {})
    common = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, seed=seed, amp=cfg.amp)
    if module == "data_free":
        from augkd_edge.method.data_free import DataFreeStage

        return DataFreeStage(teacher, student, generator, encoder, cfg.data_free, **common)
    if module == "anchor":
        from augkd_edge.evaluate import teacher_energies
        from augkd_edge.method.anchor import AnchorStage

        if margin is None and cfg.anchor.objective == "bounded":
            margin = float(teacher_energies(teacher, images, IMAGENET_MEAN, IMAGENET_STD).mean())
        return AnchorStage(teacher, generator, encoder, anchor, images, labels, eval_images, eval_labels, cfg.anchor,
                           augment=make_augment(augment), margin=margin, **common)
    if module == "mixup":
        from augkd_edge.method.mixup import build_mixup_stage

        return build_mixup_stage(method, student, teacher, generator, encoder, images, labels, eval_images,
                                 eval_labels, cfg.mixup, anchor=anchor, augment=make_augment(augment), trust=trust,
                                 **common)
    raise ValueError(f"module {module!r}: use data_free, anchor or mixup")
