"""Train-time augmentation and normalisation on whole batches.

The paper's recipe for 32x32 inputs: random crop with 4 pixels of zero padding,
plus a random horizontal flip for natural images. Digits get no flip (a
mirrored 2 or 7 is not a 2 or 7). Everything works on a batch tensor on
whatever device it lives on, with no Python loop per image, because the
data-free and mixup stages augment every step and a per-image loop would
dominate a CPU run. Apply :func:`augment` to images in [0, 1] before
:func:`normalize`, so the padding is black as with torchvision's ``RandomCrop``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

# ``augment(images, generator) -> images``, e.g. ``make_augment("digits")``.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

KINDS = ("digits", "natural")
PADDING = 4


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` for ``[B, C, H, W]`` (the deployed model's input contract)."""
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def augment(x: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (zero padding 4) for every kind, plus horizontal flip for ``"natural"``.

    Each image gets its own shift (and flip) as one gather: the output pixel
    (i, j) of image b reads padded pixel (i + dy[b], j' + dx[b]), with
    j' = W - 1 - j when b is flipped. Random numbers are drawn from
    ``generator`` (on its own device) so a seeded generator repeats a batch
    exactly, then moved to ``x``'s device; without one, from the global RNG
    of ``x``'s device.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    b, _, h, w = x.shape
    gen_device = generator.device if generator is not None else x.device
    shifts = torch.randint(0, 2 * PADDING + 1, (2, b), generator=generator, device=gen_device).to(x.device)
    rows = shifts[0, :, None] + torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device).expand(b, w)
    if kind == "natural":
        flip = torch.rand(b, generator=generator, device=gen_device).to(x.device) < 0.5
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    cols = cols + shifts[1, :, None]
    padded = F.pad(x, (PADDING, PADDING, PADDING, PADDING))
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def make_augment(kind: str) -> Augment:
    """The data module's train-time augmentation for a domain kind, as a stage callable."""

    def run(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return augment(x, kind, generator)

    return run


def strong_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """FixMatch's strong view of images in [0, 1]: a random affine, colour jitter and a cut-out square.

    Applied after :func:`augment` (the weak view's crop). Per image: rotation up to +-20 degrees, scale
    0.85-1.15 and shear up to +-0.2 (one ``affine_grid``), brightness and contrast each scaled by 0.6-1.4,
    then a zeroed square of a quarter of the side. Label-preserving for digits and natural images alike (no
    flip). Random numbers as in :func:`augment`: from ``generator``, moved to ``x``'s device.
    """
    b, _, h, w = x.shape
    gen_device = generator.device if generator is not None else x.device
    r = torch.rand(b, 7, generator=generator, device=gen_device).to(x.device, x.dtype)
    angle = (r[:, 0] * 2 - 1) * (20 * torch.pi / 180)
    scale = 0.85 + 0.3 * r[:, 1]
    shear = (r[:, 2] * 2 - 1) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin + shear, torch.zeros_like(cos)], 1),
                         torch.stack([sin, cos, torch.zeros_like(cos)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    contrast, brightness = (0.6 + 0.8 * r[:, 3]).view(b, 1, 1, 1), (0.6 + 0.8 * r[:, 4]).view(b, 1, 1, 1)
    out = ((out - mean) * contrast + mean) * brightness
    side = max(1, h // 4)
    top = (r[:, 5] * (h - side + 1)).long().clamp_(max=h - side).view(b, 1, 1)
    left = (r[:, 6] * (w - side + 1)).long().clamp_(max=w - side).view(b, 1, 1)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return out.masked_fill(hole[:, None], 0.0).clamp_(0.0, 1.0)
