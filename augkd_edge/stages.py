"""One stage of a distill run: seeded, trained through the engine with resume, and the final (student-domain)
stage of a method with the Modules 1 / 2 health it reads.

Shared by the pipeline's steps (``augkd_edge.pipeline``) and ``--method auto`` (``augkd_edge.auto``), which
trains several methods' final stages in one run.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from augkd_edge.config import METHODS

if TYPE_CHECKING:
    from augkd_edge.pipeline import Run


def seed_stage(seed: int, name: str) -> None:
    """Seed the global RNG before a stage builds its networks and trains.

    Without it a stage would start from whatever RNG state the previous stage
    left, and a resumed run, where a finished stage returns from its
    checkpoint without drawing a number, would initialise the AnchorNet and
    draw Module 3's dropout masks differently from an uninterrupted run.
    """
    import torch

    torch.manual_seed(int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:12], 16))


def measure_health(run: "Run") -> dict[str, Any]:
    """``health.module_health`` of the run's current generator, encoder and AnchorNet on the eval split (the train
    split as the fidelity's extra distractors)."""
    from augkd_edge.health import module_health

    common = run.common()
    return module_health(run.teacher, run.generator, run.encoder, run.anchor, run.x["eval"], run.y["eval"],
                         mean=common["mean"], std=common["std"], teacher_domain_energy=run.reference_energy,
                         pool_images=run.x["train"], pool_labels=run.y["train"])


def train_final(run: "Run", method: str, health: dict[str, Any]) -> None:
    """``method``'s student-domain stage on ``run.student`` (the Module 1 student, or the initial one), seeded by
    the method's name; ``health``: the Modules 1 / 2 health it reads its teacher trust and anchor share from."""
    from augkd_edge.evaluate import recompute_bn_stats
    from augkd_edge.method.mixup import anchor_weight, teacher_trust
    from augkd_edge.run_checks import RUN_ONLY_KEYS

    cfg, common = run.cfg, run.common()
    seed_stage(cfg.seed, method)
    weight = anchor_weight(cfg.mixup, health) if METHODS[method].anchor else 1.0
    trust = teacher_trust(cfg.mixup, health, run.teacher_student["eval"]["top1"], len(run.domain.classes), weight)
    from augkd_edge.method.mixup import reliability
    from augkd_edge.method.unlabelled import build_pool_term

    pool_trust = 1.0 if trust is None else reliability(run.teacher_student["eval"]["top1"], len(run.domain.classes))
    final = _final_stage(run, method, trust, weight, build_pool_term(run, method, pool_trust))
    if final is not None:
        run.echo({"augkd": "Module 3 (uncertainty-guided mixup)"}.get(method, f"{method}: student training"))
        run_cfg = {k: v for k, v in cfg.to_dict().items() if k not in RUN_ONLY_KEYS}
        best = fit_stage(run, final, cfg.mixup.epochs, run.out_dir / "ckpt" / f"{final.name}.ckpt",
                          {**run.base_fp, "cfg": run_cfg})
        run.student.load_state_dict(best["student"])
    elif cfg.mixup.recompute_bn:
        # dfkd: the Module 1 student as is, with BN statistics measured like every other method's.
        recompute_bn_stats(run.student, run.x["train"], common["mean"], common["std"])


def fit_stage(run: "Run", stage: Any, epochs: int, path: Path, fp: dict[str, Any]) -> dict[str, Any]:
    """Train ``stage`` through the engine (resuming its checkpoint at ``path``); its best state."""
    from augkd_edge.device import prefetch_depth
    from augkd_edge.engine import config_fingerprint, fit

    t0 = time.perf_counter()
    result = fit(stage, epochs, path, log=run.log, resume=True, progress=run.progress,
                 fingerprint=config_fingerprint(fp), checkpoint_every=run.checkpoint_every,
                 prefetch_batches=prefetch_depth(run.device))
    run.wall[stage.name] = result.wall_s
    run.history[stage.name] = result.history
    run.echo(f"  {stage.name}: best epoch {result.best_epoch}/{epochs}, "
             f"select {result.best_metrics.get('select', float('nan')):.4f} "
             f"({time.perf_counter() - t0:.0f} s this session)")
    return result.best_state


def _final_stage(run: "Run", method: str, trust: tuple[float, float] | None, weight: float, pool: Any) -> Any:
    """The student-domain stage of ``method`` (None for dfkd, which trains nothing more).

    ``trust``: Module 3's teacher reliabilities (``mixup.teacher_trust``); the KD baseline keeps its fixed u.
    ``weight``: Module 3's anchor share (``mixup.anchor_weight``). ``pool``: the unlabelled images' terms or None.
    """
    cfg, x, y = run.cfg, run.x, run.y
    if METHODS[method].final == "mixup":
        from augkd_edge.method.mixup import build_mixup_stage

        return build_mixup_stage(method, run.student, run.teacher, run.generator, run.encoder, x["train"],
                                 y["train"], x["eval"], y["eval"], cfg.mixup, anchor=run.anchor, augment=run.augment,
                                 trust=trust, anchor_weight=weight, pool=pool, **run.common())
    if METHODS[method].final is None:
        return None
    from augkd_edge.method.baselines import build_baseline_stage

    return build_baseline_stage(method, run.student, x["train"], y["train"], x["eval"], y["eval"], cfg.mixup,
                                teacher=run.teacher, augment=run.augment, pool=pool, **run.common())
