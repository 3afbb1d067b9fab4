"""Module 2 of AuG-KD: anchor learning.

Each labelled student-domain image x_s is mapped to an *anchor*: a latent that
keeps its class-invariant part and rewrites the domain-specific rest so that
the teacher is certain about the generated image (docs/method.md, "Module 2")::

    z = E(x_s, y)                            (E frozen, eval mode: z = mu)
    z_a, m = A(z, y)                         (z_a = m * psi(m * z) + (1 - m) * z)
    x_a = G(z_a)                             (G frozen)
    L_A = max(0, Energy_tau(T(norm(x_a))) - margin)^2 + lambda_ce * CE(T(norm(x_a)), y)
          + |sum_j m_j - L (1 - alpha)| / L + lambda_z * ||z_a - z||^2 / L

per sample, averaged (``losses.anchor_loss``; ``objective="paper"`` gives the
published Energy + lambda_ce * CE + mask, which collapses: docs/method.md).
``margin`` is the teacher's mean energy on its own domain, measured once per
run by the pipeline. A is trained, and (``adapt_encoder``, default) E adapts to
the student domain with its own loss, so that G(E(x, y)) looks like x and the
teacher reads it as y (``losses.encoder_adaptation_loss``; E was trained on
generated images only). Gradients pass through the frozen G and T without
touching their parameters. Selection: L_A on the eval split.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from augkd_edge.batching import chunks, epoch_generator, labelled_batches, weighted
from augkd_edge.config import AnchorConfig
from augkd_edge.data import Augment, normalize
from augkd_edge.distributed import current
from augkd_edge.engine import NamedState
from augkd_edge.losses import anchor_loss, encoder_adaptation_loss
from augkd_edge.models.anchornet import AnchorNet
from augkd_edge.models.fold import folded_copy
from augkd_edge.models.setup import channels_last_on_cpu, freeze
from augkd_edge.precision import Precision


class AnchorStage(NamedState):
    """Module 2 as an engine stage; one batch = labelled student-domain images."""

    name = "anchor"
    best = ("anchor", "encoder")

    def __init__(
        self,
        teacher: nn.Module,
        generator: nn.Module,
        encoder: nn.Module,
        anchor: AnchorNet,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        eval_x: torch.Tensor,
        eval_y: torch.Tensor,
        cfg: AnchorConfig,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
        augment: Augment | None = None,
        amp: str = "off",
        margin: float | None = None,
    ):
        """``margin``: the bounded objective's energy margin when ``cfg.energy_margin`` is null."""
        self.teacher, self.generator, self.encoder, self.anchor = teacher, generator, encoder, anchor
        self.margin = cfg.energy_margin if cfg.energy_margin is not None else margin
        if cfg.objective == "bounded" and self.margin is None:
            raise ValueError("the bounded anchor objective needs an energy margin: pass the teacher's in-domain "
                             "energy (pipeline.teacher_domain_energy) or set cfg.energy_margin")
        self.train_x, self.train_y, self.eval_x, self.eval_y = train_x, train_y, eval_x, eval_y
        self.cfg = cfg
        self.mean, self.std, self.seed, self.augment = tuple(mean), tuple(std), seed, augment
        self.device = next(anchor.parameters()).device
        freeze(teacher, generator, encoder)
        # only gradients to the input pass through T: fold its BN into the convs (same function, ~10% faster)
        self.teacher = folded_copy(teacher)
        channels_last_on_cpu(self.device, generator)
        self.precision = Precision(amp, self.device)
        self.train_anchor = current().wrap(anchor)  # DDP under torchrun
        groups = [{"params": list(anchor.parameters()), "lr": cfg.lr}]
        self.train_encoder: nn.Module | None = None
        if cfg.adapt_encoder:
            # E keeps eval mode (mu, frozen BN statistics); only its weights adapt to the student domain
            encoder.requires_grad_(True)
            self.train_encoder = current().wrap(encoder)
            groups.append({"params": list(encoder.parameters()), "lr": cfg.encoder_lr})
        self.optimizer = torch.optim.Adam(groups)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(cfg.epochs, 1))

    def losses(
        self, x: torch.Tensor, y: torch.Tensor, anchor: nn.Module | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """L_A and its parts for student images ``x`` with labels ``y``, and the teacher's logits on x_a.

        ``anchor``: the network to run (the DDP wrapper when training; default the bare AnchorNet).
        """
        cfg = self.cfg
        adapt = self.train_encoder is not None and anchor is not None  # training step with encoder adaptation
        with self.precision.autocast():
            with torch.set_grad_enabled(adapt):
                _, z, _ = (self.train_encoder if adapt else self.encoder)(x, y)  # mu: E is in eval mode
            if adapt:
                x_rec = self.generator(z).float()
                rec_logits = self.teacher(normalize(x_rec, self.mean, self.std)).float()
                z = z.detach()  # the anchor loss must not bend E towards easy anchors
            z_a, m = (anchor or self.anchor)(z, y)
            teacher_logits = self.teacher(normalize(self.generator(z_a), self.mean, self.std)).float()
        m = m.float()
        parts = anchor_loss(teacher_logits, y, m, tau=cfg.tau, lambda_ce=cfg.lambda_ce, alpha=cfg.alpha,
                            objective=cfg.objective, margin=self.margin, z=z.float(), z_a=z_a.float(),
                            lambda_z=cfg.lambda_z, certainty=cfg.certainty)
        parts["mask_mean"] = m.detach().mean()
        if adapt:
            enc = encoder_adaptation_loss(x_rec, x, rec_logits, y, cfg.encoder_recon_weight)
            parts |= {f"enc_{k}": v for k, v in enc.items() if k != "loss"}
            parts["loss"] = parts["loss"] + enc["loss"]
        return parts, teacher_logits

    # ---- Stage protocol -----------------------------------------------------
    def train_mode(self) -> None:
        self.anchor.train()

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
        gen = epoch_generator(self.seed, epoch)
        order = torch.randperm(len(self.train_y), generator=gen)
        yield from labelled_batches(
            self.train_x, self.train_y, order, self.cfg.batch_size, gen, self.device, self.augment
        )

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor, float]) -> dict[str, torch.Tensor]:
        x, y, weight = batch
        parts, _ = self.losses(x, y, self.train_anchor)
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward_step(weighted(parts["loss"], weight), self.optimizer)
        return {k: v.detach() for k, v in parts.items()}

    def end_epoch(self, epoch: int) -> None:
        self.scheduler.step()
        current().sync_buffers(self.anchor, self.encoder)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """L_A on the eval split, and how often the teacher names the right class on the anchor images."""
        self.anchor.eval()
        sums: dict[str, torch.Tensor] = {}
        n = len(self.eval_y)
        hits = torch.zeros((), device=self.device)
        counts = torch.zeros(self.anchor.num_classes, device=self.device)
        for sl in chunks(n, self.cfg.batch_size):
            x = self.eval_x[sl].to(self.device, non_blocking=True)
            y = self.eval_y[sl].to(self.device, non_blocking=True)
            parts, teacher_logits = self.losses(x, y)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value * (len(y) / n)
            pred = teacher_logits.argmax(dim=1)
            hits += (pred == y).sum()
            counts += torch.bincount(pred, minlength=len(counts))
        out = {f"eval_{k}": float(v) for k, v in sums.items()}
        out["eval_anchor_teacher_top1"] = float(hits) / max(n, 1)
        # a collapsed AnchorNet sends most samples to one class (docs/method.md, "Module 2")
        out["eval_anchor_max_class_share"] = float(counts.max()) / max(n, 1)
        out["select"] = out["eval_loss"]
        return out

    def parts(self) -> dict[str, Any]:
        return {"anchor": self.anchor, "encoder": self.encoder, "optimizer": self.optimizer,
                "scheduler": self.scheduler, "scaler": self.precision}
