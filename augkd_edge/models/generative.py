"""The generator G and the encoder E of AuG-KD (Module 1).

G maps a latent z in R^L to an image in [0, 1]: the same range as the data
module's images, so G's output, a student-domain image and any mixture of the
two go through one normalisation path before reaching a classifier (defect 2
of the reference code was two different paths).

E inverts G: from an image and its label it predicts the latent (mu, and a
log-variance for the VAE-style KL term). Module 2 and 3 use E to place real
student-domain images in G's latent space, where the anchor and the mixup
happen.
"""

from __future__ import annotations

import torch
from torch import nn

LOGVAR_MIN = -5.0
LOGVAR_MAX = 3.0


def _up_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


class Generator(nn.Module):
    """DCGAN-style: linear -> BN -> 2 x (upsample + conv) -> conv -> sigmoid.

    Sigmoid rather than tanh because images live in [0, 1] here (see module docstring).
    """

    def __init__(self, latent_dim: int = 100, img_size: int = 32, channels: int = 3, width: int = 64):
        super().__init__()
        if img_size % 4:
            raise ValueError(f"img_size must be a multiple of 4, got {img_size}")
        self.latent_dim, self.img_size, self.channels = latent_dim, img_size, channels
        self.init_size = img_size // 4
        self.width = width
        self.project = nn.Linear(latent_dim, 2 * width * self.init_size**2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            _up_block(2 * width, 2 * width),
            _up_block(2 * width, width),
            nn.Conv2d(width, channels, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(z.shape[0], 2 * self.width, self.init_size, self.init_size)
        return self.body(h)


class Encoder(nn.Module):
    """VAE-style encoder q(z | x, y): a small conv net on the image, the label joined as an embedding.

    ``forward`` returns ``(z, mu, logvar)``: z is a reparameterised sample in
    training mode (so E is trained as a VAE encoder) and mu in eval mode (so
    Modules 2 and 3, where E is frozen in eval mode, get a deterministic latent).
    """

    def __init__(
        self,
        latent_dim: int = 100,
        num_classes: int = 10,
        img_size: int = 32,
        channels: int = 3,
        width: int = 64,
    ):
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        # Linear on a one-hot label = a learned per-class embedding.
        self.label = nn.Embedding(num_classes, 2 * width)
        self.head = nn.Sequential(
            nn.Linear(2 * width * 4 + 2 * width, 4 * width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(4 * width, 2 * latent_dim),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = torch.cat([self.features(x), self.label(y)], dim=1)
        mu, logvar = self.head(h).chunk(2, dim=1)
        logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        if not self.training:
            return mu, mu, logvar
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return z, mu, logvar
