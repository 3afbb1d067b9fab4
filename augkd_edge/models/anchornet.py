"""AnchorNet A of AuG-KD (Module 2): a class-conditional latent rewrite.

For a student-domain latent z = E(x_s, y), A keeps the part of z that carries
the class (invariant) and rewrites the domain-specific rest so that G(z_a)
lands where the teacher is certain:

    m = M(y) in [0, 1]^L,   z_a = m * psi(m * z) + (1 - m) * z

The mask marks the rewritten dimensions; psi only sees those. Module 3 needs
``psi(m * z)`` and ``m`` separately so that ``latent_mix`` produces z_a and the
mixup latent z_m in one fused op (``components``).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class AnchorNet(nn.Module):
    """Mask M from a per-class embedding (linear on one-hot y), mapping psi a small MLP.

    ``alpha`` is the invariant (kept) ratio: the anchor loss pulls each sample's
    mask sum to L * (1 - alpha). The mask starts there (its logits initialised
    to logit(1 - alpha), plus a little noise so classes can diverge), so the
    constraint term starts near zero and does not dominate the first epochs.
    """

    def __init__(self, latent_dim: int = 100, num_classes: int = 10, alpha: float = 0.25, hidden: int = 256):
        super().__init__()
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.latent_dim, self.num_classes, self.alpha = latent_dim, num_classes, alpha
        self.mask_logits = nn.Embedding(num_classes, latent_dim)
        keep = 1.0 - alpha
        nn.init.normal_(self.mask_logits.weight, mean=math.log(keep / (1.0 - keep)), std=0.1)
        self.psi = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden, latent_dim),
        )

    def mask(self, y: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mask_logits(y))

    def components(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(psi(m * z), m)``: the inputs of ``latent_mix``."""
        m = self.mask(y)
        return self.psi(m * z), m

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_a, m)`` with z_a = m * psi(m * z) + (1 - m) * z."""
        from augkd_edge.kernels import latent_mix

        psi, m = self.components(z, y)
        z_a, _ = latent_mix(z, psi, m, 0.0)
        return z_a, m
