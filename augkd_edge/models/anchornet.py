"""AnchorNet A of AuG-KD (Module 2): a class-conditional latent rewrite.

For a student-domain latent z = E(x_s, y), A keeps the part of z that carries
the class (invariant) and rewrites the domain-specific rest so that G(z_a)
lands where the teacher is certain:

    m = M(y) in [0, 1]^L,   z_a = m * psi(m * z, y) + (1 - m) * z

The mask marks the rewritten dimensions; psi only sees those. Module 3 needs
``psi(m * z)`` and ``m`` separately so that ``latent_mix`` produces z_a and the
mixup latent z_m in one fused op (``components``).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _Psi(nn.Module):
    """The mapping psi: a two-layer MLP on m * z, plus (``conditional``) a per-class bias on its hidden layer."""

    def __init__(self, latent_dim: int, num_classes: int, hidden: int, conditional: bool):
        super().__init__()
        self.inp = nn.Linear(latent_dim, hidden)
        self.label = nn.Embedding(num_classes, hidden) if conditional else None
        if self.label is not None:
            nn.init.normal_(self.label.weight, std=1.0)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.out = nn.Linear(hidden, latent_dim)

    def forward(self, masked_z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.inp(masked_z)
        if self.label is not None:
            h = h + self.label(y)
        return self.out(self.act(h))


class AnchorNet(nn.Module):
    """Mask M from a per-class embedding (linear on one-hot y), mapping psi a small MLP.

    ``alpha`` is the invariant (kept) ratio: the anchor loss pulls each sample's
    mask sum to L * (1 - alpha). The mask starts there (its logits initialised
    to logit(1 - alpha), plus a little noise so classes can diverge), so the
    constraint term starts near zero and does not dominate the first epochs.

    ``conditional_psi`` (default): psi also sees the label, as a per-class
    bias on its hidden layer. In the paper psi sees only m * z, so the label
    reaches it through the mask alone; the masks start equal for all classes
    and move little in a short run, which leaves psi one label-blind map for
    every class (docs/method.md, "Module 2").
    """

    def __init__(
        self,
        latent_dim: int = 100,
        num_classes: int = 10,
        alpha: float = 0.25,
        hidden: int = 256,
        conditional_psi: bool = True,
    ):
        super().__init__()
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.latent_dim, self.num_classes, self.alpha = latent_dim, num_classes, alpha
        self.mask_logits = nn.Embedding(num_classes, latent_dim)
        keep = 1.0 - alpha
        nn.init.normal_(self.mask_logits.weight, mean=math.log(keep / (1.0 - keep)), std=0.1)
        self.psi = _Psi(latent_dim, num_classes, hidden, conditional_psi)

    def mask(self, y: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mask_logits(y))

    def components(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(psi(m * z, y), m)``: the inputs of ``latent_mix``."""
        m = self.mask(y)
        return self.psi(m * z, y), m

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_a, m)`` with z_a = m * psi(m * z, y) + (1 - m) * z."""
        from augkd_edge.kernels import latent_mix

        psi, m = self.components(z, y)
        z_a, _ = latent_mix(z, psi, m, 0.0)
        return z_a, m
