"""The generator G and the encoder E of AuG-KD (Module 1).

G maps a latent z in R^L to an image in [0, 1]: the same range as the data
module's images, so G's output, a student-domain image and any mixture of the
two go through one normalisation path before reaching a classifier (the public
code had two: docs/method.md, "What differs from the authors' public code", 2).

E inverts G: from an image and its label it predicts the latent (mu, and a
log-variance for the VAE-style KL term). Module 2 and 3 use E to place real
student-domain images in G's latent space, where the anchor and the mixup
happen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOGVAR_MIN = -5.0
LOGVAR_MAX = 3.0


def _taps_4(w: torch.Tensor, dim: int) -> torch.Tensor:
    """3 taps (k0, k1, k2) along ``dim`` -> the 4 taps (k2, k1+k2, k0+k1, k0) of the stride-2 form.

    Element-wise sums, not a matmul, so autocast leaves them in the weight's
    dtype (the transposed conv casts the summed kernel once, as conv2d would
    cast the 3x3 one).
    """
    k0, k1, k2 = w.unbind(dim)
    return torch.stack((k2, k1 + k2, k0 + k1, k0), dim)


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


class UpsampleConv2d(nn.Conv2d):
    """``conv3x3(upsample_nearest_2x(x))`` in one transposed conv on the low-resolution input.

    Same function, fewer operations. Along one axis, high-res output row 2i
    reads the upsampled rows (2i-1, 2i, 2i+1) = low-res rows (i-1, i, i), so
    it is ``k0 x[i-1] + (k1+k2) x[i]``; row 2i+1 is ``(k0+k1) x[i] + k2 x[i+1]``
    (zero padding 1 on the low-res input gives the borders, as padding 1 on the
    upsampled one did). Per axis that is a 4-tap kernel (k2, k1+k2, k0+k1, k0)
    at stride 2, and in 2-D a [C_in, C_out, 4, 4] ``conv_transpose2d`` with
    stride 2 and padding 1: 16 multiply-adds per low-res pixel and channel pair
    instead of 36 (4 upsampled pixels x 9 taps), no upsampled tensor is
    materialised, and the interleaving of the 4 output phases is done by the
    transposed conv itself. Only the association of floating-point sums differs
    (tap sums are formed before multiplying), so float64 results agree to
    ~1e-14 (tests/test_generative_fast.py).

    Why a transposed conv rather than 4 phase convs + interleave, and the
    timings: docs/decisions.md, "The generator's upsampling convolution".

    The parameter is the ordinary 3x3 ``weight`` [C_out, C_in, 3, 3] of the
    ``nn.Conv2d`` this replaces (initialised identically, same state_dict key
    and shape), and the 4x4 kernel is derived from it in ``forward``, so
    autograd gives ``weight`` and the input their gradients and old checkpoints
    load unchanged. ``bias`` is honoured if present (e.g. after a BN fold).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False):
        super().__init__(in_channels, out_channels, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _taps_4(_taps_4(self.weight, 2), 3).transpose(0, 1)  # [C_in, C_out, 4, 4]
        # Kernel layout as conv2d would choose: channels_last if the input or the
        # weight is, which also keeps the output in the layout conv2d gave it.
        # (A channels_last kernel is what makes oneDNN fast here.)
        cl = _is_channels_last(x) or _is_channels_last(self.weight)
        w = w.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        return F.conv_transpose2d(x, w, self.bias, stride=2, padding=1)


def _up_block(c_in: int, c_out: int) -> nn.Sequential:
    """Nearest 2x upsample + 3x3 conv, fused (UpsampleConv2d), -> BN -> LeakyReLU.

    Index 0 was ``nn.Upsample``; it is an ``nn.Identity`` now (the upsampling
    happens inside index 1) so the state_dict keys stay ``body.<b>.1.weight``,
    ``body.<b>.2.*``: checkpoints and model files from before load unchanged.
    """
    return nn.Sequential(
        nn.Identity(),
        UpsampleConv2d(c_in, c_out, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


class Generator(nn.Module):
    """DCGAN-style: linear -> BN -> 2 x (upsample + conv) -> conv -> sigmoid.

    Sigmoid rather than tanh because images live in [0, 1] here (see module docstring).

    The two upsample + conv steps are UpsampleConv2d: the same function as
    ``nn.Upsample(2, nearest)`` + 3x3 conv, with 16 instead of 36 multiply-adds
    per low-res pixel; G dominated Modules 1 and 2 on CPU (timings:
    docs/decisions.md, "The generator's upsampling convolution"). State_dict
    keys, shapes and the seeded initialisation are those of the old form, so
    checkpoints and model files load as before.
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
