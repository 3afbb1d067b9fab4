"""Latent anchor mixup (Modules 2 and 3): ``z_a = m*psi + (1-m)*z``, ``z_m = (1-f)*z_a + f*z``.

Eager PyTorch runs five elementwise kernels forward and more backward, each
re-reading ``[B, L]`` tensors; the fused kernel reads ``z, psi, m`` once and
writes both outputs. Module 2 trains AnchorNet through ``z_a`` (gradients to
``psi`` and the mask ``m``), Module 3 uses ``z_m`` under ``no_grad``; the
backward kernel handles either output's gradient being absent.
"""

from __future__ import annotations

from typing import Any

import torch

from .dispatch import NUM_WARPS, bind_triton, device_guard, tile, triton_kernels, use_triton


def latent_mix_reference(
    z: torch.Tensor, psi: torch.Tensor, m: torch.Tensor, f: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition, in fp32 like the kernel, cast back to the inputs' dtype."""
    dtype = torch.promote_types(torch.promote_types(z.dtype, psi.dtype), m.dtype)
    z32, psi32, m32 = z.float(), psi.float(), m.float()
    z_a = m32 * psi32 + (1 - m32) * z32
    z_m = (1 - f) * z_a + f * z32
    return z_a.to(dtype), z_m.to(dtype)


# Kernel bodies: module-level so Triton finds ``tl`` in this module's globals once
# ``bind_triton`` has put it there; ``_kernels`` decorates them on first use.
tl: Any = None
triton: Any = None


def _forward_kernel(
    z_ptr, psi_ptr, m_ptr, za_ptr, zm_ptr, n_rows, n_cols,
    z_sr, z_sc, p_sr, p_sc, m_sr, m_sc, f,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    mask = (rows < n_rows) & (cols < n_cols)
    z = tl.load(z_ptr + rows * z_sr + cols * z_sc, mask=mask, other=0.0).to(tl.float32)
    psi = tl.load(psi_ptr + rows * p_sr + cols * p_sc, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + rows * m_sr + cols * m_sc, mask=mask, other=0.0).to(tl.float32)
    z_a = m * psi + (1 - m) * z
    z_m = (1 - f) * z_a + f * z
    out = rows * n_cols + cols
    tl.store(za_ptr + out, z_a.to(za_ptr.dtype.element_ty), mask=mask)
    tl.store(zm_ptr + out, z_m.to(zm_ptr.dtype.element_ty), mask=mask)


def _backward_kernel(
    ga_ptr, gm_ptr, z_ptr, psi_ptr, m_ptr, dz_ptr, dpsi_ptr, dm_ptr, n_rows, n_cols,
    z_sr, z_sc, p_sr, p_sc, m_sr, m_sc, f,
    HAS_GA: tl.constexpr, HAS_GM: tl.constexpr,
    NEED_DZ: tl.constexpr, NEED_DPSI: tl.constexpr, NEED_DM: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    mask = (rows < n_rows) & (cols < n_cols)
    out = rows * n_cols + cols
    # dL/dz_a in total: its own gradient plus the path through z_m = (1-f) z_a + f z.
    g_a = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    g_m = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    if HAS_GA:
        g_a = tl.load(ga_ptr + out, mask=mask, other=0.0).to(tl.float32)
    if HAS_GM:
        g_m = tl.load(gm_ptr + out, mask=mask, other=0.0).to(tl.float32)
    g = g_a + (1 - f) * g_m
    m = tl.load(m_ptr + rows * m_sr + cols * m_sc, mask=mask, other=0.0).to(tl.float32)
    if NEED_DZ:
        tl.store(dz_ptr + out, (g * (1 - m) + f * g_m).to(dz_ptr.dtype.element_ty), mask=mask)
    if NEED_DPSI:
        tl.store(dpsi_ptr + out, (g * m).to(dpsi_ptr.dtype.element_ty), mask=mask)
    if NEED_DM:
        z = tl.load(z_ptr + rows * z_sr + cols * z_sc, mask=mask, other=0.0).to(tl.float32)
        psi = tl.load(psi_ptr + rows * p_sr + cols * p_sc, mask=mask, other=0.0).to(tl.float32)
        tl.store(dm_ptr + out, (g * (psi - z)).to(dm_ptr.dtype.element_ty), mask=mask)


@triton_kernels
def _kernels() -> tuple[Any, Any]:
    jit = bind_triton(globals())
    return jit(_forward_kernel), jit(_backward_kernel)


def _grid(n_rows: int, n_cols: int) -> tuple[tuple[int, int], int, int]:
    block_r, block_c = tile(n_rows, n_cols, max_cols=256)
    return ((n_rows + block_r - 1) // block_r, (n_cols + block_c - 1) // block_c), block_r, block_c


class _LatentMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, psi: torch.Tensor, m: torch.Tensor, f: float) -> tuple[torch.Tensor, torch.Tensor]:
        fwd, _ = _kernels()
        n_rows, n_cols = z.shape
        dtype = torch.promote_types(torch.promote_types(z.dtype, psi.dtype), m.dtype)
        m_full = m.expand(n_rows, n_cols)  # stride 0 on broadcast dims: no copy
        z_a = torch.empty((n_rows, n_cols), dtype=dtype, device=z.device)
        z_m = torch.empty_like(z_a)
        grid, block_r, block_c = _grid(n_rows, n_cols)
        with device_guard(z):
            fwd[grid](
                z, psi, m_full, z_a, z_m, n_rows, n_cols,
                *z.stride(), *psi.stride(), *m_full.stride(), float(f),
                BLOCK_R=block_r, BLOCK_C=block_c, num_warps=NUM_WARPS,
            )
        ctx.save_for_backward(z, psi, m)
        ctx.f = float(f)
        ctx.set_materialize_grads(False)  # an unused output costs no zero-filled gradient
        return z_a, z_m

    @staticmethod
    def backward(ctx: Any, g_a: torch.Tensor | None, g_m: torch.Tensor | None) -> tuple[Any, ...]:
        _, bwd = _kernels()
        z, psi, m = ctx.saved_tensors
        need_z, need_psi, need_m, _ = ctx.needs_input_grad
        if (g_a is None and g_m is None) or not (need_z or need_psi or need_m):
            return None, None, None, None
        n_rows, n_cols = z.shape
        m_full = m.expand(n_rows, n_cols)
        g_a = None if g_a is None else g_a.contiguous()
        g_m = None if g_m is None else g_m.contiguous()
        dz = torch.empty_like(z, memory_format=torch.contiguous_format) if need_z else None
        dpsi = torch.empty_like(psi, memory_format=torch.contiguous_format) if need_psi else None
        dm = torch.empty((n_rows, n_cols), dtype=m.dtype, device=m.device) if need_m else None
        placeholder = z  # never dereferenced: the matching constexpr flag is off
        grid, block_r, block_c = _grid(n_rows, n_cols)
        with device_guard(z):
            bwd[grid](
                placeholder if g_a is None else g_a, placeholder if g_m is None else g_m,
                z, psi, m_full,
                placeholder if dz is None else dz, placeholder if dpsi is None else dpsi,
                placeholder if dm is None else dm,
                n_rows, n_cols, *z.stride(), *psi.stride(), *m_full.stride(), ctx.f,
                HAS_GA=g_a is not None, HAS_GM=g_m is not None,
                NEED_DZ=need_z, NEED_DPSI=need_psi, NEED_DM=need_m,
                BLOCK_R=block_r, BLOCK_C=block_c, num_warps=NUM_WARPS,
            )
        if dm is not None and dm.shape != m.shape:
            dm = dm.sum_to_size(m.shape)  # m was broadcast over the batch (a per-class mask row)
        return dz, dpsi, dm, None


def latent_mix(
    z: torch.Tensor, psi: torch.Tensor, m: torch.Tensor, f: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor latent ``z_a`` and mixed latent ``z_m`` in one pass.

    ``z`` and ``psi`` are ``[B, L]``; ``m`` is ``[B, L]`` or broadcastable to it
    (e.g. one mask row ``[L]``). Differentiable w.r.t. ``z``, ``psi`` and ``m``
    (Module 2 trains AnchorNet through ``z_a``); ``f`` is a constant. Computed in
    fp32 whatever the input dtype; outputs take the promoted input dtype.
    """
    if z.dim() != 2 or psi.shape != z.shape:
        raise ValueError(f"latent_mix wants z and psi of the same shape [B, L], got {tuple(z.shape)} and {tuple(psi.shape)}")
    try:
        fits = m.dim() <= 2 and torch.broadcast_shapes(m.shape, z.shape) == z.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"latent_mix: mask of shape {tuple(m.shape)} must broadcast to {tuple(z.shape)}")
    if not z.device == psi.device == m.device:
        raise ValueError(f"latent_mix: z on {z.device}, psi on {psi.device}, m on {m.device}; put them on one device")
    if z.numel() and use_triton(z, psi, m):
        return _LatentMix.apply(z, psi, m, float(f))
    return latent_mix_reference(z, psi, m, float(f))
