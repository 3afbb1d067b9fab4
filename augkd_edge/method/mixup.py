"""Module 3 of AuG-KD: mixup learning, from teacher-domain anchors to the real student domain.

Per batch (x, y) of labelled student-domain images, at stage factor f = f(e)
(``losses.stage_factor``: linear from b to 1 by epoch a * E, or 10% steps)::

    z = E(x, y)                               (mu; E frozen)
    z_a = A(z, y)    z_m = (1 - f) (w z_a + (1 - w) z) + f z  (one fused ``latent_mix``; no-anchor: z_a = z)
    x_m = (1 - f) G(z_m) + f x                (G frozen)
    batch = [norm(x); norm(x_m)], labels [y; y]   (one fused ``mix_normalize``)
    L = u * CE(S(batch), y) + (1 - u) * tau^2 * KL(softmax(T(batch)/tau) || softmax(S(batch)/tau))

With ``teacher_trust="measured"`` (default) u is per sample: the teacher's
share 1 - u is scaled by its chance-corrected top-1 on the eval split's raw
images (for real images) and anchors (blended with f for mixtures), and the
curriculum starts at b' = 1 - (1 - b) r_anchor (:meth:`MixupStage.ce_share`,
docs/method.md, "Module 3").

With ``anchor_share="measured"`` (default) the anchor's share w in [0, 1]
follows the anchors' fidelity on the eval split (:func:`anchor_weight`,
``augkd_edge.fidelity``): anchors that the teacher labels right but that no
longer look like their images (teacher-fooling prototypes) get w = 0, and
AuG-KD's mixtures are then the no-anchor ablation's (towards the
reconstruction; the encoder is still the one Module 2 adapted); r_anchor
blends the anchors' and the reconstructions' reliabilities with the same w.
w is capped by min(1, (1 - u) / u): an anchor helps only the KD term, so when
CE outweighs the teacher (u > 0.5) the anchors' share shrinks with it
(``anchor_share="fidelity"`` leaves the cap out, ``"full"`` is the paper's w = 1).

The teacher's logits come from the **teacher** on the very tensor the student
sees (the public code took them from the student and normalised raw and mixed
images differently: docs/method.md, "What differs from the authors' public code",
1 and 2). Everything except the student is frozen and the mixup images are made
under ``no_grad`` (ibid., 5). The
student starts from the Module 1 student (the pipeline passes it in). The loop,
loss and evaluation are :class:`~augkd_edge.student_stage.StudentStage`'s,
shared with the baselines.

When f = 1 the mixed image equals x, and [x; x] gives exactly the same loss,
BatchNorm statistics and gradients as [x] alone, so the duplicate is skipped
(``no-mixup`` = f = 1 throughout costs what plain KD costs).

Uncertainty curriculum (``curriculum="energy"``) orders *samples*, it does not
reweight them: the teacher's energy on every (unaugmented) training image is
computed once; at epoch e the stage trains on the ``f(e)`` fraction with the
lowest energy (where the teacher is most certain; at least one batch), so the
curriculum widens together with the mixup schedule and covers all samples from
epoch a * E on. Off by default (measured: docs/method.md, "Module 3").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from augkd_edge.config import METHODS, MixupConfig
from augkd_edge.losses import stage_factor
from augkd_edge.data import Augment, normalize
from augkd_edge.evaluate import teacher_energies
from augkd_edge.models.anchornet import AnchorNet
from augkd_edge.models.setup import channels_last_on_cpu, freeze
from augkd_edge.student_stage import StudentStage, recipe


class MixupStage(StudentStage):
    """Module 3 as an engine stage (also the ``no-anchor`` and ``no-mixup`` ablations)."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        generator: nn.Module,
        encoder: nn.Module,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        eval_x: torch.Tensor,
        eval_y: torch.Tensor,
        cfg: MixupConfig,
        *,
        anchor: AnchorNet | None,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
        augment: Augment | None = None,
        mixup: bool = True,
        name: str = "mixup",
        amp: str = "off",
        trust: tuple[float, float] | None = None,
        anchor_weight: float = 1.0,
        pool: Any = None,
    ):
        """``trust``: (raw, anchored) teacher reliabilities in [0, 1] (:func:`reliability`); None = fixed u.
        ``anchor_weight``: the anchor's share w of the mixtures' latent (:func:`anchor_weight`).
        ``pool``: the unlabelled images' terms (``method.unlabelled.PoolTerm``), or None."""
        super().__init__(name, student, train_x, train_y, eval_x, eval_y, mean=mean, std=std, seed=seed,
                         augment=augment, teacher=teacher, u=cfg.u, amp=amp, pool=pool, **recipe(cfg))
        self.generator, self.encoder, self.anchor = generator, encoder, anchor
        self.cfg, self.mixup, self.trust, self.anchor_weight = cfg, mixup, trust, anchor_weight
        freeze(generator, encoder, anchor)
        channels_last_on_cpu(self.device, generator)
        self.energy_order: torch.Tensor | None = None
        if cfg.curriculum == "energy":
            self.energy_order = torch.argsort(teacher_energies(teacher, train_x, mean, std))

    def factor(self, epoch: int) -> float:
        """The stage factor f(e): the real image's share of the mixup (1 = no mixup)."""
        if not self.mixup:
            return 1.0
        cfg = self.cfg
        b = cfg.b if self.trust is None else 1.0 - (1.0 - cfg.b) * self.trust[1]
        return stage_factor(epoch, cfg.epochs, cfg.a, b, cfg.schedule)

    def ce_share(self, n_real: int, n: int, epoch: int) -> float | torch.Tensor:
        """Per sample u: the teacher's share 1 - u scaled by how often it is right on such images.

        Real images get the raw images' reliability; a mixture at stage factor f
        the blend (1 - f) * anchored + f * raw, the same blend as its pixels.
        """
        if self.trust is None:
            return self.u
        raw, anchored = self.trust
        u_real = 1.0 - (1.0 - self.u) * raw
        if n == n_real:
            return u_real
        f = self.factor(epoch)
        u_mix = 1.0 - (1.0 - self.u) * ((1.0 - f) * anchored + f * raw)
        u = torch.full((n,), u_mix, device=self.device)
        u[:n_real] = u_real
        return u

    def epoch_order(self, epoch: int, generator: torch.Generator) -> torch.Tensor:
        if self.energy_order is None:
            return super().epoch_order(epoch, generator)
        n = len(self.energy_order)
        keep = min(n, max(self.batch_size, math.ceil(self.factor(epoch) * n)))
        subset = self.energy_order[:keep]
        return subset[torch.randperm(keep, generator=generator)]

    def _pool_mixes(self) -> bool:
        return self.pool is not None and self.pool.cfg.mixup and self.pool.mix_labels is not None

    def pool_fraction(self, epoch: int) -> float:
        """The curriculum over the unlabelled pool (``PoolConfig.mixup``): the f(e) most teacher-certain share."""
        return self.factor(epoch) if self._pool_mixes() and self.cfg.curriculum == "energy" else 1.0

    def pool_kd_view(self, views: Any, epoch: int) -> torch.Tensor | None:
        """The pool images mixed like the labelled ones, under the teacher's label where it is certain (the others
        raw), normalised; None while f = 1 or without ``PoolConfig.mixup`` (method/unlabelled.py)."""
        f = self.factor(epoch)
        if f >= 1.0 or not self._pool_mixes() or self.pool.teacher is None or self.pool.gate() == 0.0:
            return None  # no mixing, or no KD term to read the mixtures (its gate shut): no wasted passes
        labels = self.pool.mix_labels[views.idx].to(self.device)
        mixed = labels >= 0
        if not bool(mixed.any()):
            return None
        x, y = views.raw, labels.clamp_min(0)
        _, z, _ = self.encoder(x, y)
        x_m = mixup_images(x, z, y, f, self.generator, self.anchor, self.anchor_weight).to(x.dtype)
        return normalize(torch.where(mixed.view(-1, 1, 1, 1), x_m, x), self.mean, self.std)

    def student_inputs(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[norm(x); norm(x_m)] and [y; y] (called under no_grad by the shared train step)."""
        from augkd_edge.kernels import mix_normalize

        f = self.factor(epoch)
        if f >= 1.0:
            return super().student_inputs(x, y, epoch)
        _, z, _ = self.encoder(x, y)  # mu
        z_m = mixup_latent(z, y, self.anchor, f, self.anchor_weight)
        # x_m = (1 - f) G(z_m) + f x (mixup_images), fused with the normalisation;
        # under --amp G's output is half precision; the mixup itself is done in x's float32
        batch = mix_normalize(x, self.generator(z_m).to(x.dtype), f, self.mean, self.std)
        return batch, torch.cat([y, y])

    def evaluate(self) -> dict[str, float]:
        # the scheduler has stepped once per finished epoch: last_epoch - 1 is the one just trained
        return super().evaluate() | {"f": self.factor(max(self.scheduler.last_epoch - 1, 0))}


def mixup_latent(z: torch.Tensor, y: torch.Tensor, anchor: AnchorNet | None, f: float,
                 weight: float = 1.0) -> torch.Tensor:
    """z_m = (1 - f) (w z_a + (1 - w) z) + f z with the anchor z_a = A(z, y) and share w = ``weight``.

    That is (1 - f') z_a + f' z with f' = 1 - (1 - f) w: one fused ``latent_mix``.
    Without an AnchorNet (``no-anchor``) or with w = 0, z_m = z.
    """
    from augkd_edge.kernels import latent_mix

    if anchor is None or weight <= 0.0:
        return z
    psi, m = anchor.components(z, y)
    _, z_m = latent_mix(z, psi, m, 1.0 - (1.0 - f) * min(weight, 1.0))
    return z_m


def mixup_images(x: torch.Tensor, z: torch.Tensor, y: torch.Tensor, f: float, generator: nn.Module,
                 anchor: AnchorNet | None, weight: float = 1.0) -> torch.Tensor:
    """Module 3's training image x_m = (1 - f) G(z_m) + f x, z = E(x, y) (mu), in [0, 1].

    The run report draws these (``z`` encoded once for every f); training computes the
    same with the normalisation fused in (:meth:`MixupStage.student_inputs`).
    """
    return (1 - f) * generator(mixup_latent(z, y, anchor, f, weight)) + f * x


def reliability(top1: float, num_classes: int) -> float:
    """Chance-corrected top-1 in [0, 1]: 0 at chance (1 / K) or worse, 1 when always right."""
    chance = 1.0 / num_classes
    return min(1.0, max(0.0, (top1 - chance) / (1.0 - chance)))


def anchor_weight(cfg: MixupConfig, health: dict[str, Any]) -> float:
    """The anchor's share w of Module 3's mixtures.

    ``anchor_share="full"``: 1 (the paper). ``"fidelity"``: from the anchors' fidelity on the eval split
    (``fidelity.anchor_share``), so teacher-fooling anchors get none. ``"measured"`` (default): that, capped
    by the loss balance ``fidelity.kd_balance(u)``, since only the KD term profits from an anchor. 1 for runs
    without anchors (it is unused).
    """
    anc = health.get("anchor")
    if cfg.anchor_share == "full" or anc is None:
        return 1.0
    from augkd_edge.fidelity import anchor_share

    w = anchor_share(float(anc.get("fidelity", float("nan"))), cfg.fidelity_floor, cfg.fidelity_full)
    return w * anchor_cap(cfg)


def anchor_cap(cfg: MixupConfig) -> float:
    """The cap on the anchor's share from the loss balance: ``fidelity.kd_balance(u)`` under ``"measured"``, else 1."""
    from augkd_edge.fidelity import kd_balance

    return kd_balance(cfg.u) if cfg.anchor_share == "measured" else 1.0


def teacher_trust(cfg: MixupConfig, health: dict[str, Any], raw_top1: float, num_classes: int,
                  weight: float = 1.0) -> tuple[float, float] | None:
    """Module 3's (raw, anchored) teacher reliabilities from the eval split's ``health.module_health``; None for
    a fixed u.

    Anchored images are the anchors (reconstructions for no-anchor, whose z_a = z); with an anchor share
    ``weight`` w < 1 the mixtures lie between the two, and so does their reliability: w r_anchor + (1 - w) r_recon.
    """
    if cfg.teacher_trust == "fixed":
        return None

    def rel(made: dict[str, Any] | None) -> float:
        return reliability(made["teacher_top1"] if made is not None else raw_top1, num_classes)

    rec = rel(health["reconstruction"])
    anchored = rec if health["anchor"] is None else weight * rel(health["anchor"]) + (1.0 - weight) * rec
    return reliability(raw_top1, num_classes), anchored


def build_mixup_stage(method: str, *args: Any, anchor: AnchorNet | None, **kwargs: Any) -> MixupStage:
    """Module 3 for a method of ``config.METHODS`` whose final stage is ``"mixup"``: ``augkd``, or its ablations
    ``no-anchor`` (z_a = z) and ``no-mixup`` (f = 1).

    ``args`` / ``kwargs``: :class:`MixupStage`'s, without ``anchor``, ``mixup`` and ``name``.
    """
    spec = METHODS.get(method)
    if spec is None or spec.final != "mixup":
        names = [m.name for m in METHODS.values() if m.final == "mixup"]
        raise ValueError(f"{method!r} is not a Module 3 method; use one of {', '.join(names)}")
    if spec.anchor and spec.mixup and anchor is None:
        raise ValueError(f"{method} needs the Module 2 AnchorNet")
    return MixupStage(
        *args,
        anchor=anchor if spec.anchor else None,
        mixup=spec.mixup,
        name=spec.stage_name,
        **kwargs,
    )
