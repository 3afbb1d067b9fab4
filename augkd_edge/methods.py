"""The one table of ``--method`` choices: what each runs, read by the pipeline, the stages, the report and the CLI."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Method:
    """What one ``--method`` runs: the one table the pipeline, the stages, the report and the CLI read.

    ``final``: the student-domain stage after Modules 1 and 2: ``"mixup"`` (Module 3, ``method/mixup.py``),
    ``"baseline"`` (``method/baselines.py``), None (``dfkd``: the Module 1 student as it is) or ``"auto"``
    (the stages of :data:`AUTO_CANDIDATES`, one after the other), named ``stage_name`` (its checkpoint
    ``ckpt/<stage_name>.ckpt`` and metrics lines).
    """

    name: str
    data_free: bool  # Module 1 (generator, encoder, student warm-up)
    anchor: bool  # Module 2 (AnchorNet); Module 3 without it mixes towards the reconstruction (z_a = z)
    final: str | None
    stage_name: str | None
    mixup: bool = False  # Module 3 mixes generated and real images (False: f = 1 throughout)
    kd: bool = False  # a baseline that distils from the teacher (u * CE + (1 - u) * tau^2 * KL)
    summary: str = ""
    # With --unlabelled: which pool terms the final stage adds (method/unlabelled.py): "kd+consistency" (as
    # PoolConfig says), "consistency" (the student's pseudo-labels only), "kd" (the teacher's soft labels at
    # full weight: Hinton's transfer set) or "none" (the pool is not used).
    pool: str = "none"
    needs_pool: bool = False  # a baseline defined by the pool: refused without --unlabelled


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("augkd", True, True, "mixup", "mixup", mixup=True, summary="AuG-KD (Modules 1, 2, 3)",
           pool="kd+consistency"),
    Method("no-kd", False, False, "baseline", "no_kd", summary="CE on the labelled images alone"),
    Method("kd", False, False, "baseline", "kd", kd=True, summary="KD from the teacher on the labelled images"),
    Method("dfkd", True, False, None, None, summary="the Module 1 student as it is"),
    Method("dfkd-finetune", True, False, "baseline", "dfkd_finetune", summary="the Module 1 student fine-tuned with CE"),
    Method("no-anchor", True, False, "mixup", "mixup_no_anchor", mixup=True, summary="Module 3 without Module 2 (z_a = z)",
           pool="kd+consistency"),
    Method("no-mixup", True, True, "mixup", "mixup_no_mixup", summary="Module 3 with f = 1 (no mixup)",
           pool="kd+consistency"),
    Method("self-train", False, False, "baseline", "self_train", pool="consistency", needs_pool=True,
           summary="no-kd + FixMatch consistency on the --unlabelled images (self-training, no teacher)"),
    Method("kd-unlabelled", False, False, "baseline", "kd_unlabelled", pool="kd", needs_pool=True,
           summary="CE on the labelled images + the teacher's soft labels on the --unlabelled images (Hinton)"),
    Method("auto", True, True, "auto", None, mixup=True,
           summary="trains augkd, no-anchor and dfkd-finetune on one teacher and Module 1 and keeps the student "
                   "that wins on the eval split: augkd unless another beats it by more than one standard error"),
)}
# --method auto's candidates, simplest first: a tie on the eval split goes to the earlier one (pipeline.auto_step)
AUTO_CANDIDATES = ("dfkd-finetune", "no-anchor", "augkd")
