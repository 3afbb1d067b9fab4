"""Module 1 of AuG-KD: data-free learning of the generator, the encoder and a student warm-up.

No teacher-domain data exists, so G learns from the teacher alone to make
images that look like D_t to it. Per iteration (docs/method.md, "Module 1"):

1. one generator step on z ~ N(0, I), x = G(z)::

       L_G = -KL(T(x) || S(x)) + CE(T(x), argmax T(x)) + alpha_g * sum pbar log10 pbar + L_BN

   (``losses.generator_loss``; L_BN from ``losses.BNStatsHook`` on T's BatchNorm2d
   layers, hooks removed after the step);
2. ``k`` steps of student and encoder on fresh z, images made without gradient::

       L_S = KL(T(x) || S(x)) at temperature 1           (losses.student_kl)
       L_E = ||E(x, argmax T(x)) - z||^2 + 2.5e-4 * KL(N(mu, sigma^2) || N(0, I))   (losses.encoder_loss)

Design choices beyond the paper (docs/method.md, "Module 1"):

- the images of step 2 come from G in eval mode: Modules 2 and 3 use G frozen
  in eval mode, so E learns to invert exactly the G it will be used with;
- checkpoint selection (``select``) uses the generator loss *without* its
  adversarial term on a fixed validation noise set. The adversarial term
  -KL(T || S) measures how weak the current student is, not how teacher-like
  the images are; with it, the first epoch (untrained student, huge KL) would
  always win. All parts, and the encoder loss, are logged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from augkd_edge.batching import chunks, epoch_generator, weighted
from augkd_edge.config import DataFreeConfig
from augkd_edge.data import normalize
from augkd_edge.distributed import current
from augkd_edge.engine import NamedState
from augkd_edge.losses import BNStatsHook, encoder_loss, generator_loss, student_kl
from augkd_edge.models.fold import folded_copy
from augkd_edge.models.setup import channels_last_on_cpu, freeze, no_param_grads
from augkd_edge.precision import Precision

_VAL_STREAM = 7  # the validation noise's own RNG stream, apart from the training epochs'


class DataFreeStage(NamedState):
    """Module 1 as an engine stage; one batch = the noise for one iteration."""

    name = "data_free"
    best = ("generator", "encoder", "student")

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        generator: nn.Module,
        encoder: nn.Module,
        cfg: DataFreeConfig,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
        amp: str = "off",
    ):
        self.teacher, self.student, self.generator, self.encoder = teacher, student, generator, encoder
        self.cfg = cfg
        self.mean, self.std, self.seed = tuple(mean), tuple(std), seed
        self.device = next(generator.parameters()).device
        freeze(teacher)
        # The generator step needs T's BatchNorm inputs (L_BN); the k student steps only need its
        # logits, from a copy with BN folded into the convs (the same function, fewer passes).
        self.fast_teacher = folded_copy(teacher)
        channels_last_on_cpu(self.device, generator, student)
        self.precision = Precision(amp, self.device)
        dist = current()
        dist.check_batch(cfg.batch_size, "data_free.batch_size")
        # DDP wrappers for the training forwards; frozen uses, evaluation and state_dict use the bare nets
        self.train_generator, self.train_encoder, self.train_student = (
            dist.wrap(generator), dist.wrap(encoder), dist.wrap(student))
        # DCGAN practice for the generator (beta1 = 0.5): a steadier adversarial game.
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr_g, betas=(0.5, 0.999))
        self.opt_e = torch.optim.Adam(encoder.parameters(), lr=cfg.lr_e)
        self.opt_s = torch.optim.Adam(student.parameters(), lr=cfg.lr_s)
        self.optimizers = {"generator": self.opt_g, "encoder": self.opt_e, "student": self.opt_s}
        self.schedulers = {
            key: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
            for key, opt in self.optimizers.items()
        }
        gen = epoch_generator(seed, 0, self.device, stream=_VAL_STREAM)
        self.val_z = torch.randn(cfg.val_samples, cfg.latent_dim, generator=gen, device=self.device)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.mean, self.std)

    # ---- Stage protocol -----------------------------------------------------
    def train_mode(self) -> None:
        self.generator.train()
        self.encoder.train()
        self.student.train()

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
        """Per iteration: z for the generator step [B, L], for the k student steps [k, B, L], the share weight.

        Under torchrun every rank draws the whole single-process noise and keeps its share.
        """
        dist = current()
        gen = epoch_generator(self.seed, epoch, self.device)
        shape = (self.cfg.batch_size, self.cfg.latent_dim)
        for _ in range(self.cfg.iters_per_epoch):
            z_g = torch.randn(shape, generator=gen, device=self.device)
            z_s = torch.randn((self.cfg.k, *shape), generator=gen, device=self.device)
            yield dist.shard(z_g), dist.shard(z_s, dim=1), dist.weight(self.cfg.batch_size)

    def generator_parts(
        self, z: torch.Tensor, generator: nn.Module | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """L_G and its parts for noise ``z``, with the images and the teacher's logits.

        Gradient reaches G through T's and S's inputs. ``generator``: the net
        to run (the DDP wrapper when training; default the bare G).
        """
        with self.precision.autocast():
            x = (generator or self.generator)(z)
            xn = self._norm(x)
            with BNStatsHook(self.teacher) as bn:
                teacher_logits = self.teacher(xn).float()
            student_logits = self.student(xn).float()
        x = x.float()
        cfg = self.cfg
        parts = generator_loss(
            teacher_logits,
            student_logits,
            bn.loss(),
            adv_weight=cfg.adv_weight,
            ce_weight=cfg.ce_weight,
            alpha_g=cfg.alpha_g,
            bn_weight=cfg.bn_weight,
        )
        return parts, x, teacher_logits

    def student_encoder_losses(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_S, L_E) on images G(z) made without gradient.

        With ``encoder_recon_weight`` > 0, L_E also holds the image-space error
        ||G(mu) - x||^2 (per-pixel mean) through the frozen-for-this-step G, and
        with ``encoder_teacher_weight`` > 0 the teacher's KL(T(x) || T(G(mu))):
        the latent error alone leaves E far from inverting G in a short run, and
        what Modules 2 and 3 need is that G(E(x, y)) looks like x to the eye and
        to the teacher (docs/method.md, "Module 1"). Neither term moves G or T.
        """
        cfg = self.cfg
        with self.precision.autocast():
            with torch.no_grad():
                self.generator.eval()
                x = self.generator(z).float()
                teacher_logits = self.fast_teacher(self._norm(x)).float()
            labels = teacher_logits.argmax(dim=1)
            student_logits = self.train_student(self._norm(x)).float()
            z_hat, mu, logvar = self.train_encoder(x, labels)
            extra = torch.zeros((), device=x.device)
            if cfg.encoder_recon_weight > 0 or cfg.encoder_teacher_weight > 0:
                with no_param_grads(self.generator):
                    x_rec = self.generator(mu).float()
                if cfg.encoder_recon_weight > 0:
                    extra = extra + cfg.encoder_recon_weight * (x_rec - x).pow(2).mean()
                if cfg.encoder_teacher_weight > 0:
                    # the teacher reads the reconstruction as it reads the image (its own logits as target)
                    rec_logits = self.fast_teacher(self._norm(x_rec)).float()
                    extra = extra + cfg.encoder_teacher_weight * student_kl(rec_logits, teacher_logits)
            self.generator.train()
        loss_s = student_kl(student_logits, teacher_logits)
        loss_e = encoder_loss(z_hat.float(), z, mu.float(), logvar.float(), cfg.encoder_kl_weight) + extra
        return loss_s, loss_e

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor, float]) -> dict[str, torch.Tensor]:
        z_g, z_s, weight = batch
        # 1. generator step; the student only passes gradients through to the images
        with no_param_grads(self.student):
            parts, _, _ = self.generator_parts(z_g, self.train_generator)
        self.opt_g.zero_grad(set_to_none=True)
        self.precision.backward_step(weighted(parts["loss"], weight), self.opt_g)
        # 2. k student + encoder steps (separate graphs, one backward of their sum)
        sum_s = torch.zeros((), device=self.device)
        sum_e = torch.zeros((), device=self.device)
        for z in z_s:
            loss_s, loss_e = self.student_encoder_losses(z)
            self.opt_s.zero_grad(set_to_none=True)
            self.opt_e.zero_grad(set_to_none=True)
            self.precision.backward_step(weighted(loss_s + loss_e, weight), self.opt_s, self.opt_e)
            sum_s += loss_s.detach()
            sum_e += loss_e.detach()
        out = {f"g_{k}": v.detach() for k, v in parts.items()}
        out["loss_s"] = sum_s / len(z_s)
        out["loss_e"] = sum_e / len(z_s)
        return out

    def end_epoch(self, epoch: int) -> None:
        for scheduler in self.schedulers.values():
            scheduler.step()
        current().sync_buffers(self.generator, self.encoder, self.student)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Losses on the fixed validation noise, all nets in eval mode."""
        for net in (self.generator, self.encoder, self.student):
            net.eval()
        sums: dict[str, torch.Tensor] = {}
        n = len(self.val_z)
        for sl in chunks(n, self.cfg.batch_size):
            z = self.val_z[sl]
            weight = (sl.stop - sl.start) / n
            parts, x, teacher_logits = self.generator_parts(z)
            z_hat, mu, logvar = self.encoder(x, teacher_logits.argmax(dim=1))
            parts["encoder"] = encoder_loss(z_hat, z, mu, logvar, self.cfg.encoder_kl_weight)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + weight * value
        out = {f"val_{k}": float(v) for k, v in sums.items()}
        cfg = self.cfg
        out["select"] = (
            cfg.ce_weight * out["val_ce"] + cfg.alpha_g * out["val_balance"] + cfg.bn_weight * out["val_bn"]
        )
        return out

    def parts(self) -> dict[str, Any]:
        """What a checkpoint holds (``engine.NamedState``); the best epoch keeps the three networks."""
        return {"generator": self.generator, "encoder": self.encoder, "student": self.student,
                "optimizers": self.optimizers, "schedulers": self.schedulers, "scaler": self.precision}
