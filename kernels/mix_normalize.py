"""Module 3's training batch ``[norm(x), norm((1-f)*g + f*x)]`` written in one pass.

Eager PyTorch mixes (two passes), concatenates (a copy of both halves) and
normalises (another pass over ``2B`` images). The kernel reads ``x`` and ``g``
once and writes both halves of the ``[2B, C, H, W]`` batch straight into one
buffer, so real and mixed images get exactly the same normalisation (the public
reference code normalised them differently: docs/method.md, "What differs from the authors' public code").

Not differentiable: mixup images are made under ``torch.no_grad()`` from the
frozen generator (docs/method.md, Module 3), so a backward pass would be wasted work.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from .dispatch import NUM_WARPS, bind_triton, device_guard, tile, triton_kernels, use_triton


@functools.lru_cache(maxsize=32)
def _channel_table(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    # Cached so a training loop does not copy the same 3 floats to the GPU every batch.
    return torch.tensor(values, dtype=torch.float32, device=device)


def _as_channel_tensor(values: Sequence[float] | torch.Tensor, channels: int, device: torch.device, name: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        table = values.detach().to(device=device, dtype=torch.float32).reshape(-1)
    else:
        table = _channel_table(tuple(float(v) for v in values), device)
    if table.numel() != channels:
        raise ValueError(f"mix_normalize: {name} has {table.numel()} values but the images have {channels} channels")
    return table


def mix_normalize_reference(
    x: torch.Tensor, g: torch.Tensor, f: float, mean: torch.Tensor, std: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """The definition in fp32, written into ``out`` (``mean``/``std``: fp32 ``[C]``)."""
    n = x.shape[0]
    mean4, std4 = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    x32, g32 = x.float(), g.float()
    out[:n] = (x32 - mean4) / std4
    out[n:] = ((1 - f) * g32 + f * x32 - mean4) / std4
    return out


# Module-level kernel body; see dispatch.bind_triton for why ``tl`` is bound lazily.
tl: Any = None
triton: Any = None


def _kernel(
    x_ptr, g_ptr, out_ptr, mean_ptr, std_ptr, n_planes, n_channels, plane, half, f,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Rows are (image, channel) planes, columns pixels: one mean/std per row.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    row_ok = rows < n_planes
    mask = row_ok[:, None] & (cols < plane)
    channel = rows % n_channels
    mean = tl.load(mean_ptr + channel, mask=row_ok, other=0.0)[:, None]
    std = tl.load(std_ptr + channel, mask=row_ok, other=1.0)[:, None]
    offs = rows.to(tl.int64)[:, None] * plane + cols
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, ((x - mean) / std).to(out_ptr.dtype.element_ty), mask=mask)
    mixed = ((1 - f) * g + f * x - mean) / std
    tl.store(out_ptr + half + offs, mixed.to(out_ptr.dtype.element_ty), mask=mask)


@triton_kernels
def _kernels() -> Any:
    jit = bind_triton(globals())
    return jit(_kernel)


def mix_normalize(
    x: torch.Tensor,
    g: torch.Tensor,
    f: float,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Real images ``x`` and generated images ``g`` (``[B, C, H, W]``) -> normalised ``[2B, C, H, W]``.

    ``out[:B] = norm(x)``, ``out[B:] = norm((1-f)*g + f*x)`` with
    ``norm(v) = (v - mean_c) / std_c``. ``out`` (optional) is a preallocated
    contiguous ``[2B, C, H, W]`` buffer, reused across batches to avoid an
    allocation. Not differentiable: call it under ``torch.no_grad()`` (raises
    if an input requires grad while grad mode is on, rather than silently
    cutting the graph).
    """
    if torch.is_grad_enabled() and (x.requires_grad or g.requires_grad):
        raise RuntimeError(
            "mix_normalize is not differentiable: mixup images are built from the frozen generator "
            "under torch.no_grad(); wrap the call in `with torch.no_grad():` or pass detached images"
        )
    if x.dim() != 4 or g.shape != x.shape:
        raise ValueError(f"mix_normalize wants x and g of the same shape [B, C, H, W], got {tuple(x.shape)} and {tuple(g.shape)}")
    if g.device != x.device:
        raise ValueError(f"mix_normalize: x is on {x.device} but g is on {g.device}")
    n, channels, height, width = x.shape
    mean_t = _as_channel_tensor(mean, channels, x.device, "mean")
    std_t = _as_channel_tensor(std, channels, x.device, "std")
    if out is None:
        out = torch.empty((2 * n, channels, height, width), dtype=torch.promote_types(x.dtype, g.dtype), device=x.device)
    elif out.shape != (2 * n, channels, height, width) or not out.is_contiguous() or out.device != x.device:
        raise ValueError(
            f"mix_normalize: out must be a contiguous {(2 * n, channels, height, width)} tensor on {x.device}, "
            f"got {tuple(out.shape)} on {out.device} (contiguous={out.is_contiguous()})"
        )
    if x.numel() == 0 or not use_triton(x, g, out):
        return mix_normalize_reference(x, g, float(f), mean_t, std_t, out)
    x, g = x.contiguous(), g.contiguous()
    n_planes, plane = n * channels, height * width
    block_r, block_c = tile(n_planes, plane)
    grid = ((n_planes + block_r - 1) // block_r, (plane + block_c - 1) // block_c)
    with device_guard(x):
        _kernels()[grid](
            x, g, out, mean_t, std_t, n_planes, channels, plane, x.numel(), float(f),
            BLOCK_R=block_r, BLOCK_C=block_c, num_warps=NUM_WARPS,
        )
    return out
