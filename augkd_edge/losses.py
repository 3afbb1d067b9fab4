"""Every loss of AuG-KD (docs/method.md), each a small function, in one place.

Module 1 (data-free): :func:`generator_loss` (adversarial, teacher-argmax CE,
class balance, :class:`BNStatsHook`), :func:`student_kl`, :func:`encoder_loss`.
Module 2 (anchor): :func:`anchor_loss`. Module 3 (mixup) and the KD baseline:
:func:`mixup_distill_loss`; its stage factor: :func:`stage_factor`.

Hot, fused ones (energy, the mixup/KD loss) go through ``augkd_edge.kernels``'
dispatcher, which runs a Triton kernel on CUDA and the PyTorch reference
elsewhere; the functions here fix the method's conventions around them
(reductions, which logits carry gradient).

Conventions: KL(p || q) is summed over classes and averaged over the batch
(``batchmean``); "per sample, averaged" losses are computed per sample first.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from augkd_edge.config import ANCHOR_OBJECTIVES


# ---------------------------------------------------------------- shared parts
def kl_teacher_student(teacher_logits: torch.Tensor, student_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """KL(softmax(t/tau) || softmax(s/tau)), batch mean; gradient flows into both sides.

    Both sides matter in the generator step: the images are pushed to where the
    two models disagree, through T's and S's inputs alike.
    """
    log_p = F.log_softmax(teacher_logits / tau, dim=1)
    log_q = F.log_softmax(student_logits / tau, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def energy(logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Per-sample Energy_tau(f) = -tau * logsumexp(f / tau); low = the model is certain."""
    from augkd_edge.kernels import energy_score

    return energy_score(logits, tau)


# ---------------------------------------------------------------- Module 1
def teacher_argmax_ce(teacher_logits: torch.Tensor) -> torch.Tensor:
    """CE(T(x), argmax T(x)): pushes generated images to be confidently class-like."""
    return F.cross_entropy(teacher_logits, teacher_logits.argmax(dim=1))


def class_balance(teacher_logits: torch.Tensor) -> torch.Tensor:
    """sum_c pbar_c log10 pbar_c with pbar the batch-mean teacher softmax (minimum: uniform classes)."""
    pbar = F.softmax(teacher_logits, dim=1).mean(dim=0)
    return (pbar * torch.log10(pbar.clamp_min(1e-12))).sum()


class BNStatsHook(AbstractContextManager["BNStatsHook"]):
    """DeepInversion-style statistics matching on every BatchNorm2d of a (frozen) model.

    Inside the ``with`` block each forward of the model records, per BN layer,
    ||mu_batch - running_mean||_2 + ||var_batch - running_var||_2 of the layer's
    input; :meth:`loss` sums them. The hooks are removed on exit, also on an
    exception: hooks left behind (as in the public code: docs/method.md, "What
    differs from the authors' public code", 5) would keep computing and holding
    graphs on every later teacher forward.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._handles: list[Any] = []
        self._terms: list[torch.Tensor] = []

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        x = inputs[0].float()  # statistics in float32 also under --amp
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        self._terms.append(
            torch.linalg.vector_norm(mean - module.running_mean) + torch.linalg.vector_norm(var - module.running_var)
        )

    def __enter__(self) -> "BNStatsHook":
        self._terms = []
        self._handles = [
            m.register_forward_hook(self._hook) for m in self.model.modules() if isinstance(m, nn.BatchNorm2d)
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def loss(self) -> torch.Tensor:
        """Sum over BN layers of everything recorded since entering (0 if nothing ran)."""
        if not self._terms:
            return torch.zeros(())
        return torch.stack(self._terms).sum()


def generator_loss(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    bn_loss: torch.Tensor,
    *,
    adv_weight: float = 1.0,
    ce_weight: float = 1.0,
    alpha_g: float = 20.0,
    bn_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Module 1 generator loss and its parts.

    L_G = -adv * KL(T || S) + ce * CE(T, argmax T) + alpha_g * sum pbar log10 pbar + bn * L_BN
    """
    parts = {
        "adv": -kl_teacher_student(teacher_logits, student_logits),
        "ce": teacher_argmax_ce(teacher_logits),
        "balance": class_balance(teacher_logits),
        "bn": bn_loss,
    }
    parts["loss"] = (
        adv_weight * parts["adv"] + ce_weight * parts["ce"] + alpha_g * parts["balance"] + bn_weight * parts["bn"]
    )
    return parts


def student_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Module 1 student loss: KL(T || S) at temperature 1; gradient only to the student.

    The fused ``distill_loss`` with u = 0 and tau = 1 is exactly this KL.
    """
    from augkd_edge.kernels import distill_loss

    target = teacher_logits.argmax(dim=1)  # unused at u = 0, required by the signature
    return distill_loss(student_logits, teacher_logits.detach(), target, 0.0, 1.0)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(N(mu, sigma^2) || N(0, I)), summed over latent dimensions."""
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)


def encoder_loss(
    z_hat: torch.Tensor,
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    kl_weight: float = 2.5e-4,
) -> torch.Tensor:
    """Module 1 encoder loss: ||E(x, y) - z||^2 + kl_weight * KL(N(mu, sigma^2) || N(0, I)), batch mean."""
    return ((z_hat - z).pow(2).sum(dim=1) + kl_weight * gaussian_kl(mu, logvar)).mean()


# ---------------------------------------------------------------- Module 2


def bounded_energy(
    logits: torch.Tensor, margin: float | torch.Tensor, tau: float = 1.0, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample squared hinge max(0, E - margin)^2 (energy-bounded learning, Liu et al. 2020).

    E is Energy_tau(f) = -tau logsumexp(f / tau), or with ``labels`` the
    label's own energy -f_y (certainty *in the label*, not in any class).
    Zero once the teacher is as certain as ``margin`` (its energy on its own
    domain): unlike the raw energy it cannot fall forever, so it gives no
    reward for driving every anchor to one over-confident image
    (docs/method.md, "Module 2").
    """
    e = energy(logits, tau) if labels is None else -logits.gather(1, labels[:, None]).squeeze(1)
    return torch.relu(e - margin).pow(2)


def anchor_loss(
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    *,
    tau: float = 1.0,
    lambda_ce: float = 0.1,
    alpha: float = 0.25,
    objective: str = "paper",
    margin: float | None = None,
    z: torch.Tensor | None = None,
    z_a: torch.Tensor | None = None,
    lambda_z: float = 0.0,
    certainty: str = "label",
) -> dict[str, torch.Tensor]:
    """Module 2 loss, per sample then averaged, and its parts.

    ``objective="paper"``::

        L_A = Energy_tau(T(x_a)) + lambda_ce * CE(T(x_a), y) + |sum_j m_j - L (1 - alpha)| / L

    ``objective="bounded"`` (the default of ``AnchorConfig``; docs/method.md)::

        L_A = max(0, E(T(x_a)) - margin)^2 + lambda_ce * CE(T(x_a), y)
              + |sum_j m_j - L (1 - alpha)| / L + lambda_z * ||z_a - z||^2 / L

    with E the label's energy -f_y (``certainty="label"``) or Energy_tau (``"all"``).

    The mask term is per sample with a target inside the mask's reachable
    range [0, L] (the public code compared a batch sum with a per-sample
    target its mask could not reach). ``energy`` is always the raw mean
    energy, whatever the objective, so runs stay comparable.
    """
    if objective not in ANCHOR_OBJECTIVES:
        raise ValueError(f"unknown anchor objective {objective!r}; use one of {', '.join(ANCHOR_OBJECTIVES)}")
    latent = mask.shape[1]
    parts = {
        "energy": energy(teacher_logits, tau).mean(),
        "ce": F.cross_entropy(teacher_logits, labels),
        "mask": ((mask.sum(dim=1) - latent * (1.0 - alpha)).abs() / latent).mean(),
    }
    if objective == "paper":
        parts["loss"] = parts["energy"] + lambda_ce * parts["ce"] + parts["mask"]
        return parts
    if margin is None:
        raise ValueError("the bounded anchor objective needs the energy margin (the teacher's in-domain energy)")
    parts["energy_hinge"] = bounded_energy(teacher_logits, margin, tau, labels if certainty == "label" else None).mean()
    parts["loss"] = parts["energy_hinge"] + lambda_ce * parts["ce"] + parts["mask"]
    if z is not None and z_a is not None:
        parts["keep"] = (z_a - z).pow(2).sum(dim=1).mean() / latent
        parts["loss"] = parts["loss"] + lambda_z * parts["keep"]
    return parts


def encoder_adaptation_loss(
    reconstruction: torch.Tensor,
    images: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    recon_weight: float = 100.0,
) -> dict[str, torch.Tensor]:
    """Module 2's encoder adaptation: recon_weight * ||G(E(x, y)) - x||^2 (per-pixel mean) + CE(T(G(E(x, y))), y).

    ``teacher_logits`` are T's on the reconstruction. E learned to invert G on
    generated images only; on student-domain images it must also put x where
    G draws something like x that the teacher reads as y (docs/method.md).
    """
    parts = {"recon": (reconstruction - images).pow(2).mean(), "ce": F.cross_entropy(teacher_logits, labels)}
    parts["loss"] = recon_weight * parts["recon"] + parts["ce"]
    return parts


# ---------------------------------------------------------------- Module 3 and KD
def mixup_distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    u: float | torch.Tensor = 0.5,
    tau: float = 10.0,
) -> torch.Tensor:
    """u * CE(S, y) + (1 - u) * tau^2 * KL(softmax(T/tau) || softmax(S/tau)), batch mean.

    ``teacher_logits`` must come from the teacher (the public code took them from
    the student, making the KD term zero: docs/method.md, "What differs from the
    authors' public code", 1); they carry no gradient. ``u`` may be per sample.
    """
    from augkd_edge.kernels import distill_loss

    return distill_loss(student_logits, teacher_logits.detach(), labels, u, tau)


def stage_factor(epoch: int, total_epochs: int, a: float = 0.6, b: float = 0.2, schedule: str = "linear") -> float:
    """Module 3's stage factor f(e): the share of the real image in the mixup.

    linear: f(e) = min(1, b + (1 - b) * e / (a * E_total)), e counted from 0, so
    training starts at f = b (mostly anchors) and is fully real from e = a * E.
    step: the same, rounded down to 10% steps (never ahead of the linear one).
    """
    if total_epochs <= 0 or not 0.0 < a <= 1.0:
        raise ValueError(f"need total_epochs > 0 and 0 < a <= 1, got {total_epochs}, {a}")
    f = min(1.0, b + (1.0 - b) * epoch / (a * total_epochs))
    if schedule == "linear":
        return f
    if schedule == "step":
        return math.floor(f * 10.0 + 1e-9) / 10.0
    raise ValueError(f"unknown schedule {schedule!r}; use linear or step")
