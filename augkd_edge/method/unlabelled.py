"""Unlabelled student-domain images (``--unlabelled``) in Module 3 and the baselines.

Per labelled batch of B images the stage draws ``ratio * B`` pool images (seeded by (seed, epoch) on a stream
of their own, so a resumed epoch repeats them), makes a *weak* view (the labelled images' augmentation) and a
*strong* view of it (``data.augment.strong_augment``), and the student sees [its usual batch; weak; strong] in
one forward, so BatchNorm sees the whole step as in FixMatch. The pool adds::

    L_pool = kd_weight * mean_i w_i tau^2 KL(softmax(T(weak_i)/tau) || softmax(S(weak_i)/tau))
           + consistency_weight * mean_i 1[max_c p_ic >= t] CE(S(strong_i), argmax_c p_ic),  p = softmax(S(weak)), no grad

The teacher's per-image weight ``w_i = r * c_i`` turns a teacher that is wrong on the domain down twice:
``r`` is its measured trust (chance-corrected top-1 on the eval split's raw images, as Module 3's u; 1 with
``teacher_trust="fixed"``), ``c_i = sigmoid((m - E_i) / s)`` its certainty on this image, with E_i its energy on
the (unaugmented) pool image and m, s the median and standard deviation of its energies on the labelled
training images it labels right: as sure as where it is right gives c >= 0.5, far less sure gives c -> 0
(:func:`certainty_weights`). ``kd_gate="agree"`` also zeroes w_i where the teacher's and the student's top-1
on the weak view differ; ``kd_gate="better"`` scales every w_i by how far the teacher beats the student on the eval
split, ``g = clip((a_T - a_S) / (1 - a_S), 0, 1)`` with a_T the teacher's top-1 on the eval split's raw images and a_S
the student's after the previous epoch (chance before the first one, so g starts at r): a teacher worse than the
student would pull it down to its own accuracy on a transfer set this large (:meth:`PoolTerm.gate`).
``kd_gate="where-sure"`` compares the two where the teacher would teach: a_T and a_S are the accuracies on the eval
images weighted by the teacher's certainty c_i on them (a teacher poor overall can still beat the student on the
images it is sure of). The terms a method uses are ``config.METHODS``' ``pool``: ``kd+consistency``
(augkd and its ablations), ``consistency`` (``self-train``: no teacher), ``kd`` (``kd-unlabelled``: Hinton's
transfer set, w_i = 1, no consistency). docs/method.md, "Unlabelled images".

With ``PoolConfig.mixup`` Module 3 treats the pool as it treats the labelled images: the KD term reads each pool
image mixed towards its anchor at the stage factor f, ``x_m = (1 - f) G(z_m) + f x`` with z = E(x, y_T) and y_T the
teacher's top-1 on the unaugmented image where the teacher is certain (c_i >= 0.5; the others, and every image of a
teacher at chance, stay raw), and with ``mixup.curriculum="energy"`` the pool is drawn from its f(e) share with the
lowest teacher energy (``MixupStage.pool_kd_view``, ``pool_fraction``). The consistency term keeps the raw
weak and strong views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from augkd_edge.batching import epoch_generator
from augkd_edge.config import PoolConfig
from augkd_edge.data import normalize
from augkd_edge.data.augment import Augment, strong_augment
from augkd_edge.distributed import current

POOL_MODES = ("kd+consistency", "consistency", "kd")
POOL_STREAM = 7  # the pool's random stream in ``batching.epoch_generator``


class PoolViews(NamedTuple):
    """One step's pool images: normalised weak and strong views, their pool indices, and the weak view in [0, 1]
    (what Module 3 mixes towards the anchors)."""

    weak: torch.Tensor
    strong: torch.Tensor
    idx: torch.Tensor
    raw: torch.Tensor


def certainty_weights(pool_energy: torch.Tensor, right_energy: torch.Tensor, trust: float) -> torch.Tensor:
    """``w_i = trust * sigmoid((m - E_i) / s)``: m, s the median and std of ``right_energy`` (the teacher's energies
    on the labelled images it labels right; s at least 1e-3). No right image: the teacher earns no weight."""
    if right_energy.numel() == 0:
        return torch.zeros_like(pool_energy)
    m = right_energy.median()
    s = right_energy.std(unbiased=False).clamp_min(1e-3) if right_energy.numel() > 1 else torch.tensor(1.0)
    return trust * torch.sigmoid((m - pool_energy) / s)


class PoolTerm:
    """The pool's views and loss for one student stage (``StudentStage(pool=...)``)."""

    def __init__(self, images: torch.Tensor, cfg: PoolConfig, mode: str, *, teacher: nn.Module | None,
                 kd_weights: torch.Tensor | None, mean: Sequence[float], std: Sequence[float], seed: int,
                 augment: Augment | None, tau: float, teacher_top1: float = 1.0, num_classes: int = 2,
                 eval_certainty: torch.Tensor | None = None, teacher_eval_right: torch.Tensor | None = None,
                 mix_labels: torch.Tensor | None = None, energy_order: torch.Tensor | None = None):
        """``kd_weights``: w_i per pool image (None for ``consistency``); ``teacher``: needed unless ``consistency``;
        ``teacher_top1``: a_T of ``kd_gate="better"`` (the teacher's eval-split top-1); ``eval_certainty`` and
        ``teacher_eval_right``: the teacher's c_i and correctness on the eval images (``kd_gate="where-sure"``);
        ``mix_labels``: the label each pool image is mixed under in Module 3 (-1: not mixed) and ``energy_order``:
        the pool by increasing teacher energy (``PoolConfig.mixup``; None without it)."""
        if mode not in POOL_MODES:
            raise ValueError(f"pool mode must be one of {POOL_MODES}, got {mode!r}")
        if mode != "consistency" and (teacher is None or kd_weights is None):
            raise ValueError(f"pool mode {mode} needs the teacher and its per-image weights")
        from augkd_edge.models.fold import folded_copy

        self.images, self.cfg, self.mode = images, cfg, mode
        self.kd_weights = kd_weights
        self.mean, self.std, self.seed, self.augment, self.tau = tuple(mean), tuple(std), seed, augment, tau
        self.kd_scale = cfg.kd_weight if mode != "kd" else 1.0
        self.cons_scale = cfg.consistency_weight if mode != "kd" else 0.0
        use_teacher = teacher is not None and mode != "consistency" and self.kd_scale > 0
        self.teacher = folded_copy(teacher) if use_teacher else None  # no teacher pass for a term weighted 0
        self.teacher_top1, self.chance = teacher_top1, 1.0 / num_classes
        self.student_top1 = self.chance  # chance, until the stage's first evaluation (observe)
        self.eval_certainty, self.teacher_eval_right = eval_certainty, teacher_eval_right
        self.mix_labels, self.energy_order = mix_labels, energy_order
        self.student_eval_right: torch.Tensor | None = None
        if cfg.kd_gate == "where-sure" and mode == "kd+consistency" and eval_certainty is None:
            raise ValueError("kd_gate where-sure needs the teacher's certainty and correctness on the eval images")

    @property
    def needs_eval_right(self) -> bool:
        return self.cfg.kd_gate == "where-sure" and self.mode == "kd+consistency"

    def observe(self, student_top1: float, student_right: torch.Tensor | None = None) -> None:
        """The student's eval-split top-1 (and, for ``where-sure``, which eval images it gets right) after an
        epoch: a_S of the next epoch's :meth:`gate`."""
        self.student_top1 = float(student_top1)
        if student_right is not None:
            self.student_eval_right = student_right.float().cpu()

    def _accuracies(self) -> tuple[float, float]:
        """(a_T, a_S) of the gate: plain eval top-1, or certainty-weighted over the eval images (where-sure)."""
        if not self.needs_eval_right:
            return self.teacher_top1, self.student_top1
        c = self.eval_certainty.float().cpu()
        total = float(c.sum())
        if total <= 0.0:
            return 0.0, self.student_top1  # sure of nothing: it teaches nothing
        a_t = float((c * self.teacher_eval_right.float().cpu()).sum()) / total
        a_s = self.chance if self.student_eval_right is None else float((c * self.student_eval_right).sum()) / total
        return a_t, a_s

    def gate(self) -> float:
        """``kd_gate="better"``'s g = clip((a_T - a_S) / (1 - a_S), 0, 1): the share of the student's remaining
        errors the teacher could mend; 0 once the student is as good (1 for the other gates)."""
        if self.cfg.kd_gate not in ("better", "where-sure") or self.mode == "kd":
            return 1.0
        a_t, a_s = self._accuracies()
        if a_s >= 1.0:
            return 0.0
        return min(1.0, max(0.0, (a_t - a_s) / (1.0 - a_s)))

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (a resumed epoch gates as the uninterrupted one)."""
        return {"student_top1": self.student_top1, "student_eval_right": self.student_eval_right}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student_top1 = float(state["student_top1"])
        self.student_eval_right = state.get("student_eval_right")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def generator(self, epoch: int) -> torch.Generator:
        return epoch_generator(self.seed, epoch, stream=POOL_STREAM)

    def views(self, n_labelled: int, generator: torch.Generator, device: torch.device,
              fraction: float = 1.0) -> PoolViews:
        """The views of ``ratio * n_labelled`` pool images (this rank's share), drawn from the ``fraction`` of the
        pool with the lowest teacher energy when there is an ``energy_order`` (the curriculum), else from all."""
        dist = current()
        count = self.cfg.ratio * n_labelled
        if fraction < 1.0 and self.energy_order is not None:
            keep = max(1, math.ceil(fraction * len(self)))
            idx = self.energy_order[torch.randint(keep, (count,), generator=generator)]
        else:
            idx = torch.randint(len(self), (count,), generator=generator)
        weak = self.images[idx]
        if self.augment is not None:
            weak = self.augment(weak, generator)
        strong = strong_augment(weak, generator)
        weak, strong, idx = dist.shard(weak), dist.shard(strong), dist.shard(idx)
        weak = weak.to(device, non_blocking=True)
        return PoolViews(normalize(weak, self.mean, self.std),
                         normalize(strong.to(device, non_blocking=True), self.mean, self.std), idx, weak)

    @torch.no_grad()
    def teacher_logits(self, weak: torch.Tensor) -> torch.Tensor | None:
        """The teacher on the weak views; None without a teacher term or while the gate is shut (no wasted pass:
        a term weighted 0 adds exactly nothing to the loss or its gradients)."""
        if self.teacher is None or self.gate() == 0.0:
            return None
        return self.teacher(weak).float()

    def loss(self, weak_logits: torch.Tensor, strong_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
             idx: torch.Tensor, kd_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_pool (module docstring) and its parts for the metrics log; ``kd_logits``: the student on the view the
        teacher saw when that is not the weak one (Module 3's mixtures)."""
        kd_logits = weak_logits if kd_logits is None else kd_logits
        total = weak_logits.new_zeros(())
        stats: dict[str, torch.Tensor] = {}
        if teacher_logits is not None and self.kd_scale > 0:
            if self.mode == "kd":
                w = weak_logits.new_ones(len(idx))
            else:
                w = self.kd_weights[idx].to(weak_logits.device, weak_logits.dtype)
            if self.cfg.kd_gate == "agree" and self.mode != "kd":
                w = w * (teacher_logits.argmax(1) == kd_logits.detach().argmax(1)).to(w.dtype)
            w = w * self.gate()
            kl = F.kl_div(F.log_softmax(kd_logits / self.tau, 1), F.log_softmax(teacher_logits / self.tau, 1),
                          log_target=True, reduction="none").sum(1) * self.tau**2
            kd = (w * kl).mean()
            total = total + self.kd_scale * kd
            stats |= {"pool_kd": kd.detach(), "pool_kd_w": w.mean().detach(),
                      "pool_gate": weak_logits.new_tensor(self.gate())}
        elif self.teacher is not None:  # the gate is shut: the same metrics, all 0
            stats |= {key: weak_logits.new_zeros(()) for key in ("pool_kd", "pool_kd_w", "pool_gate")}
        if self.cons_scale > 0:
            probs = weak_logits.detach().softmax(1)
            conf, pseudo = probs.max(1)
            mask = (conf >= self.cfg.threshold).to(weak_logits.dtype)
            cons = (F.cross_entropy(strong_logits, pseudo, reduction="none") * mask).mean()
            total = total + self.cons_scale * cons
            stats |= {"pool_cons": cons.detach(), "pool_mask": mask.mean().detach()}
        return total, stats


def build_pool_term(run: Any, method: str, trust: float) -> PoolTerm | None:
    """The pool term of ``method``'s final stage (``config.METHODS``' ``pool``), or None without a pool to use.

    ``trust``: the teacher's reliability r on the eval split's raw images (1 with a fixed teacher trust).
    """
    from augkd_edge.config import METHODS
    from augkd_edge.losses import energy

    mode = METHODS[method].pool
    if run.pool is None or len(run.pool) == 0 or mode == "none" or run.cfg.pool.use_labels:
        return None  # no pool, a method without pool terms, the supervised ceiling, or a pool held out unused
    common = run.common()
    weights = eval_certainty = eval_right = mix_labels = energy_order = None
    if mode != "consistency":
        pool_logits, right_energy = run.teacher_logits("pool"), _right_energy(run)
        weights = certainty_weights(energy(pool_logits), right_energy, trust)
        eval_logits = run.teacher_logits("eval")
        eval_certainty = certainty_weights(energy(eval_logits), right_energy, 1.0)
        eval_right = eval_logits.argmax(1) == run.y["eval"]
        run.pool_stats[method] = {"kd_trust": round(trust, 4), "kd_weight_mean": round(float(weights.mean()), 4),
                                  "kd_gate": run.cfg.pool.kd_gate if mode != "kd" else "none"}
        if run.cfg.pool.mixup and METHODS[method].final == "mixup":
            mix_labels, energy_order = mixup_labels(pool_logits, right_energy, trust)
            run.pool_stats[method]["mixup_labelled"] = round(float((mix_labels >= 0).float().mean()), 4)
    return PoolTerm(run.pool.images, run.cfg.pool, mode, teacher=run.teacher, kd_weights=weights,
                    mean=common["mean"], std=common["std"], seed=run.cfg.seed, augment=run.augment,
                    tau=run.cfg.mixup.tau, teacher_top1=float(run.teacher_student["eval"]["top1"]),
                    num_classes=len(run.domain.classes), eval_certainty=eval_certainty, teacher_eval_right=eval_right,
                    mix_labels=mix_labels, energy_order=energy_order)


def anchor_images(run: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Module 2's extra training images (``PoolConfig.anchor_images``): up to that many pool images the teacher
    labels with certainty (:func:`mixup_labels`), the surest first, with its labels; empty without a pool."""
    from augkd_edge.method.mixup import reliability

    cfg = run.cfg
    if run.pool is None or len(run.pool) == 0 or cfg.pool.anchor_images == 0 or cfg.pool.use_labels:
        return run.x["train"][:0], run.y["train"][:0]
    trust = 1.0 if cfg.mixup.teacher_trust == "fixed" else reliability(run.teacher_student["eval"]["top1"],
                                                                         len(run.domain.classes))
    labels, order = mixup_labels(run.teacher_logits("pool"), _right_energy(run), trust)
    chosen = order[labels[order] >= 0][:cfg.pool.anchor_images]
    run.pool_stats["anchor"] = {"anchor_images": len(chosen)}
    return run.pool.images[chosen], labels[chosen].to(run.y["train"].dtype)


def _right_energy(run: Any) -> torch.Tensor:
    """The teacher's energies on the labelled training images it labels right: the yardstick of its certainty."""
    from augkd_edge.losses import energy

    logits = run.teacher_logits("train")
    return energy(logits)[logits.argmax(1) == run.y["train"]]


def mixup_labels(pool_logits: torch.Tensor, right_energy: torch.Tensor,
                 trust: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(label, order) for Module 3's pool mixtures: the teacher's top-1 where it is certain (c_i >= 0.5 of
    :func:`certainty_weights`: at least as sure as on the labelled images it gets right), -1 elsewhere and
    everywhere for a teacher at chance (``trust`` 0: its labels are noise); the pool by increasing teacher energy.
    The anchor of an image is made for its label, so a wrong label would carry the image to another class."""
    from augkd_edge.losses import energy

    e = energy(pool_logits)
    certain = certainty_weights(e, right_energy, 1.0) >= 0.5
    if trust <= 0.0:
        certain = torch.zeros_like(certain)
    return torch.where(certain, pool_logits.argmax(1), -1), torch.argsort(e)


def pool_step(run: Any) -> dict[str, Any]:
    """The --unlabelled pool (``data.unlabelled``): held out of the test split or read from a folder, deduplicated
    against the splits, checked against a resumed run's; returns its fingerprint for splits.json."""
    import warnings

    from augkd_edge.data.unlabelled import check_same_pool, describe, hold_out, is_held_out, load_pool
    from augkd_edge.errors import BadImageWarning
    from augkd_edge.run_checks import recorded_data

    if is_held_out(run.cfg):
        run.splits = hold_out(run.splits, run.domain.labels, run.cfg.seed)
    run.pool = load_pool(run.cfg, run.domain, run.splits)
    check_same_pool(recorded_data(run.out_dir, "unlabelled"), run.pool)
    line, leak = describe(run.pool)
    run.echo(line)
    if leak is not None:
        warnings.warn(leak, BadImageWarning, stacklevel=2)
    return run.pool.fingerprint()


def pool_results(run: Any) -> dict[str, Any] | None:
    """results.json's ``unlabelled`` block: the pool, the terms the shipped method used, its KD weights."""
    from augkd_edge.config import METHODS

    if run.pool is None:
        return None
    method = run.auto["chosen"] if run.auto else run.cfg.method
    terms = "labels" if run.cfg.pool.use_labels else METHODS[method].pool if len(run.pool) else "none"
    return {**run.pool.summary(), "terms": terms, **run.pool_stats.get(method, {}), **run.pool_stats.get("anchor", {})}
