"""Energy score ``-tau * logsumexp(logits / tau)`` per row (Module 2 loss, curriculum order).

Low energy means the teacher is certain. The kernel keeps a running max and a
rescaled running sum per row (online logsumexp), so logits of 1e4 do not
overflow and rows of thousands of classes are read once, in chunks. The backward
pass is ``-softmax(logits / tau)`` times the incoming gradient, recomputed from
the saved per-row logsumexp instead of storing a ``[B, K]`` softmax.
"""

from __future__ import annotations

from typing import Any

import torch

from .dispatch import NUM_WARPS, bind_triton, device_guard, tile, triton_kernels, use_triton


def energy_score_reference(logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """The definition, accumulated in fp32; returns float32 ``[B]``."""
    return -tau * torch.logsumexp(logits.float() / tau, dim=-1)


# Module-level kernel bodies; see dispatch.bind_triton for why ``tl`` is bound lazily.
tl: Any = None
triton: Any = None


def _forward_kernel(
    x_ptr, energy_ptr, lse_ptr, n_rows, n_cols, stride_r, tau,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, N_CHUNKS: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    base = x_ptr + rows.to(tl.int64)[:, None] * stride_r
    # A finite start keeps exp(m_old - m_new) at 1, not NaN, before the first real value.
    m = tl.full([BLOCK_R], -3.0e38, tl.float32)
    d = tl.zeros([BLOCK_R], dtype=tl.float32)
    for chunk in range(N_CHUNKS):
        cols = chunk * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
        mask = row_ok[:, None] & (cols < n_cols)
        x = tl.load(base + cols, mask=mask, other=float("-inf")).to(tl.float32) / tau
        m_new = tl.maximum(m, tl.max(x, axis=1))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[:, None]), axis=1)
        m = m_new
    lse = tl.where(row_ok, m + tl.log(tl.where(row_ok, d, 1.0)), 0.0)
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    tl.store(energy_ptr + rows, -tau * lse, mask=row_ok)


def _backward_kernel(
    x_ptr, lse_ptr, g_ptr, dx_ptr, n_rows, n_cols, stride_r, tau,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, N_CHUNKS: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)[:, None]
    g = tl.load(g_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    src = x_ptr + rows.to(tl.int64)[:, None] * stride_r
    dst = dx_ptr + rows.to(tl.int64)[:, None] * n_cols
    for chunk in range(N_CHUNKS):
        cols = chunk * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
        mask = row_ok[:, None] & (cols < n_cols)
        x = tl.load(src + cols, mask=mask, other=float("-inf")).to(tl.float32) / tau
        dx = -g * tl.exp(x - lse)
        tl.store(dst + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton_kernels
def _kernels() -> tuple[Any, Any]:
    jit = bind_triton(globals())
    return jit(_forward_kernel), jit(_backward_kernel)


def _launch_shape(logits: torch.Tensor) -> tuple[tuple[int], int, int, int]:
    """Grid, rows per program, columns per chunk and chunks per row.

    The chunk count is a constexpr: Triton 3.6's interpreter cannot loop to a
    runtime bound under numpy 2.x, and K is fixed per model, so it costs one
    compilation per model.
    """
    n_rows, n_cols = logits.shape
    block_r, block_c = tile(n_rows, n_cols, elements=2048)
    return ((n_rows + block_r - 1) // block_r,), block_r, block_c, (n_cols + block_c - 1) // block_c


class _Energy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, tau: float) -> torch.Tensor:
        fwd, _ = _kernels()
        n_rows, n_cols = logits.shape
        energy = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(energy)
        grid, block_r, block_c, n_chunks = _launch_shape(logits)
        with device_guard(logits):
            fwd[grid](
                logits, energy, lse, n_rows, n_cols, logits.stride(0), tau,
                BLOCK_R=block_r, BLOCK_C=block_c, N_CHUNKS=n_chunks, num_warps=NUM_WARPS,
            )
        ctx.save_for_backward(logits, lse)
        ctx.tau = tau
        return energy

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        _, bwd = _kernels()
        logits, lse = ctx.saved_tensors
        n_rows, n_cols = logits.shape
        dx = torch.empty((n_rows, n_cols), dtype=logits.dtype, device=logits.device)
        grid, block_r, block_c, n_chunks = _launch_shape(logits)
        with device_guard(logits):
            bwd[grid](
                logits, lse, grad.contiguous(), dx, n_rows, n_cols, logits.stride(0), ctx.tau,
                BLOCK_R=block_r, BLOCK_C=block_c, N_CHUNKS=n_chunks, num_warps=NUM_WARPS,
            )
        return dx, None


def energy_score(logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Per-row energy of ``[B, K]`` logits, as float32 ``[B]``; differentiable.

    Returned in fp32 whatever the logits' dtype: it is a loss term and a
    ranking key for the curriculum, and bf16's 8 bits of mantissa would merge
    the energies of samples the curriculum must tell apart.
    """
    if logits.dim() != 2 or logits.shape[1] == 0:
        raise ValueError(f"energy_score wants logits of shape [B, K] with K >= 1, got {tuple(logits.shape)}")
    if not tau > 0:
        raise ValueError(f"energy_score: temperature tau must be > 0, got {tau}")
    if logits.numel() and use_triton(logits):
        if logits.stride(1) != 1:
            logits = logits.contiguous()
        return _Energy.apply(logits, float(tau))
    return energy_score_reference(logits, float(tau))
