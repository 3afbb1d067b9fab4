"""Module 3's loss: ``u*CE(s, y) + (1-u)*tau^2*KL(softmax(t/tau) || softmax(s/tau))`` per sample.

Eager PyTorch materialises ``log_softmax`` of student and teacher at two
temperatures plus the KL terms, about a dozen ``[B, K]`` passes forward and as
many backward. The fused kernel (the Liger-Kernel pattern) reads each row of
student and teacher logits once, keeps three online logsumexps and the
teacher-weighted logit gap, and, while the row is still in registers or cache,
writes the gradient w.r.t. the student logits; backward only scales it by the
incoming gradient.

The KL term uses ``KL = E_pt[(t - s)/tau] - lse(t/tau) + lse(s/tau)``, which
needs no second pass. The teacher and ``u`` are constants: no gradient flows to
them (the teacher is frozen in Module 3; ``u`` is a schedule or a detached
uncertainty weight), on both backends.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .dispatch import NUM_WARPS, bind_triton, device_guard, tile, triton_kernels, use_triton

REDUCTIONS = ("mean", "sum", "none")


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def distill_loss_reference(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    u: float | torch.Tensor,
    tau: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """The definition in fp32; "mean" divides the per-sample sum by B (KLDivLoss batchmean)."""
    s = student_logits.float()
    t = teacher_logits.detach().float()
    u = u.detach().float().reshape(-1) if isinstance(u, torch.Tensor) else float(u)
    ce = F.cross_entropy(s, target, reduction="none")
    kl = F.kl_div(
        F.log_softmax(s / tau, dim=-1), F.log_softmax(t / tau, dim=-1), reduction="none", log_target=True
    ).sum(dim=-1)
    return _reduce(u * ce + (1 - u) * (tau * tau) * kl, reduction)


# Module-level kernel body; see dispatch.bind_triton for why ``tl`` is bound lazily.
tl: Any = None
triton: Any = None


def _forward_kernel(
    s_ptr, t_ptr, y_ptr, u_ptr, loss_ptr, grad_ptr,
    n_rows, n_cols, s_stride, t_stride, u_stride, u_value, tau, grad_scale,
    U_PER_ROW: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, N_CHUNKS: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    rows64 = rows.to(tl.int64)[:, None]
    s_row = s_ptr + rows64 * s_stride
    t_row = t_ptr + rows64 * t_stride
    y = tl.load(y_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    if U_PER_ROW:
        u = tl.load(u_ptr + rows * u_stride, mask=row_ok, other=0.0).to(tl.float32)
    else:
        u = tl.zeros([BLOCK_R], dtype=tl.float32) + u_value
    # Online logsumexp state for s (CE, temperature 1), q = s/tau and r = t/tau. A finite
    # start keeps exp(m_old - m_new) at 1, not NaN, before the first real value.
    m_s = tl.full([BLOCK_R], -3.0e38, tl.float32)
    m_q = tl.full([BLOCK_R], -3.0e38, tl.float32)
    m_r = tl.full([BLOCK_R], -3.0e38, tl.float32)
    d_s = tl.zeros([BLOCK_R], dtype=tl.float32)
    d_q = tl.zeros([BLOCK_R], dtype=tl.float32)
    d_r = tl.zeros([BLOCK_R], dtype=tl.float32)
    gap = tl.zeros([BLOCK_R], dtype=tl.float32)  # sum_j exp(r_j - m_r) * (r_j - q_j)
    s_y = tl.zeros([BLOCK_R], dtype=tl.float32)
    for chunk in range(N_CHUNKS):
        cols = chunk * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
        mask = row_ok[:, None] & (cols < n_cols)
        s = tl.load(s_row + cols, mask=mask, other=0.0).to(tl.float32)
        t = tl.load(t_row + cols, mask=mask, other=0.0).to(tl.float32)
        # r - q from the zero-padded loads, so padded lanes stay finite (no inf - inf)
        diff = t / tau - s / tau
        s = tl.where(mask, s, float("-inf"))
        q = s / tau
        r = tl.where(mask, t, float("-inf")) / tau
        m_new = tl.maximum(m_s, tl.max(s, axis=1))
        d_s = d_s * tl.exp(m_s - m_new) + tl.sum(tl.exp(s - m_new[:, None]), axis=1)
        m_s = m_new
        m_new = tl.maximum(m_q, tl.max(q, axis=1))
        d_q = d_q * tl.exp(m_q - m_new) + tl.sum(tl.exp(q - m_new[:, None]), axis=1)
        m_q = m_new
        m_new = tl.maximum(m_r, tl.max(r, axis=1))
        rescale = tl.exp(m_r - m_new)
        e = tl.exp(r - m_new[:, None])
        d_r = d_r * rescale + tl.sum(e, axis=1)
        # p_t = 0 (padding, -inf teacher logits) contributes nothing, not 0 * inf = NaN.
        gap = gap * rescale + tl.sum(tl.where(e > 0, e * diff, 0.0), axis=1)
        m_r = m_new
        s_y += tl.sum(tl.where(mask & (cols == y[:, None]), s, 0.0), axis=1)
    # Rows past the batch end get neutral values so no lane computes inf - inf.
    d_r = tl.where(row_ok, d_r, 1.0)
    lse_s = tl.where(row_ok, m_s + tl.log(tl.where(row_ok, d_s, 1.0)), 0.0)
    lse_q = tl.where(row_ok, m_q + tl.log(tl.where(row_ok, d_q, 1.0)), 0.0)
    lse_r = tl.where(row_ok, m_r + tl.log(d_r), 0.0)
    # A label outside [0, K) poisons the loss with NaN instead of reading out of bounds.
    ce = tl.where((y >= 0) & (y < n_cols), lse_s - s_y, float("nan"))
    # lse_r - lse_q as (m_r - m_q) + log(d_r / d_q): the log of a ratio near 1 keeps the
    # absolute rounding small where log(d) ~ log K would cost an ulp of log K (K = 3000: 1e-6).
    kl = gap / d_r - ((m_r - m_q) + tl.log(d_r / tl.where(row_ok, d_q, 1.0)))
    tl.store(loss_ptr + rows, u * ce + (1 - u) * (tau * tau) * kl, mask=row_ok)
    if COMPUTE_GRAD:
        g_row = grad_ptr + rows64 * n_cols
        w_ce = (u * grad_scale)[:, None]
        w_kl = ((1 - u) * tau * grad_scale)[:, None]
        for chunk in range(N_CHUNKS):
            cols = chunk * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
            mask = row_ok[:, None] & (cols < n_cols)
            s = tl.load(s_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
            t = tl.load(t_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
            p_s = tl.exp(s - lse_s[:, None])
            p_q = tl.exp(s / tau - lse_q[:, None])
            p_t = tl.exp(t / tau - lse_r[:, None])
            onehot = tl.where(cols == y[:, None], 1.0, 0.0)
            g = w_ce * (p_s - onehot) + w_kl * (p_q - p_t)
            tl.store(g_row + cols, g.to(grad_ptr.dtype.element_ty), mask=mask)


@triton_kernels
def _kernels() -> Any:
    jit = bind_triton(globals())
    return jit(_forward_kernel)


class _DistillLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        s: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        u: float | torch.Tensor,
        tau: float,
        reduction: str,
        compute_grad: bool,
    ) -> torch.Tensor:
        kernel = _kernels()
        n_rows, n_cols = s.shape
        loss = torch.empty(n_rows, dtype=torch.float32, device=s.device)
        grad = torch.empty((n_rows, n_cols), dtype=s.dtype, device=s.device) if compute_grad else loss
        u_per_row = isinstance(u, torch.Tensor)
        u_t = u.detach().reshape(-1) if u_per_row else loss  # loss: a placeholder pointer, never read
        block_r, block_c = tile(n_rows, n_cols, elements=2048)
        grid = ((n_rows + block_r - 1) // block_r,)
        n_chunks = (n_cols + block_c - 1) // block_c  # constexpr: see energy._launch_shape
        with device_guard(s):
            kernel[grid](
                s, t, y, u_t, loss, grad, n_rows, n_cols, s.stride(0), t.stride(0),
                u_t.stride(0) if u_per_row and u_t.numel() > 1 else 0,
                0.0 if u_per_row else float(u), tau, 1.0 / n_rows if reduction == "mean" else 1.0,
                U_PER_ROW=u_per_row, COMPUTE_GRAD=compute_grad,
                BLOCK_R=block_r, BLOCK_C=block_c, N_CHUNKS=n_chunks, num_warps=NUM_WARPS,
            )
        if compute_grad:
            ctx.save_for_backward(grad)
        ctx.reduction = reduction
        return _reduce(loss, reduction)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        (grad,) = ctx.saved_tensors
        scale = grad_out[:, None] if ctx.reduction == "none" else grad_out
        return (grad * scale).to(grad.dtype), None, None, None, None, None, None


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    u: float | torch.Tensor,
    tau: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """Uncertainty-weighted CE + KD loss of Module 3, in fp32.

    ``u`` is a float or a per-sample ``[B]`` tensor (e.g. from the teacher's
    energy). ``reduction``: "mean" (sum over samples / B, i.e. KLDivLoss's
    batchmean), "sum" or "none" (``[B]``). The gradient reaches the student
    logits only. The result is float32 whatever the logits' dtype.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"distill_loss: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if student_logits.dim() != 2 or teacher_logits.shape != student_logits.shape:
        raise ValueError(
            "distill_loss wants student and teacher logits of the same shape [B, K], got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if not student_logits.device == teacher_logits.device == target.device:
        raise ValueError(
            f"distill_loss: student logits on {student_logits.device}, teacher logits on "
            f"{teacher_logits.device}, targets on {target.device}; put them on one device"
        )
    n_rows = student_logits.shape[0]
    if target.shape != (n_rows,) or target.dtype.is_floating_point:
        raise ValueError(f"distill_loss wants integer class targets of shape [{n_rows}], got {target.dtype} {tuple(target.shape)}")
    if isinstance(u, torch.Tensor) and u.numel() not in (1, n_rows):
        raise ValueError(f"distill_loss: u must be a float or have 1 or {n_rows} elements, got shape {tuple(u.shape)}")
    if not tau > 0:
        raise ValueError(f"distill_loss: temperature tau must be > 0, got {tau}")
    if isinstance(u, torch.Tensor):
        u = u.detach().to(student_logits.device)  # a kernel must never get a pointer to another device
    if student_logits.numel() and use_triton(student_logits, teacher_logits, target):
        s = student_logits if student_logits.stride(1) == 1 else student_logits.contiguous()
        t = teacher_logits.detach()
        t = t if t.stride(1) == 1 else t.contiguous()
        # Decided here: inside forward() grad mode is always off, and under no_grad the
        # gradient pass would be wasted work.
        compute_grad = torch.is_grad_enabled() and s.requires_grad
        return _DistillLoss.apply(s, t, target.contiguous(), u, float(tau), reduction, compute_grad)
    return distill_loss_reference(student_logits, teacher_logits, target, u, float(tau), reduction)
