"""RMSNorm, forward and backward: y = x / sqrt(mean(x^2) + eps) * (weight + offset).

offset 0 is the Llama family (which also rounds the normalised x to the input dtype before the
weight multiplies it), offset 1 is Gemma (weight stored as a difference from 1). The forward
saves one float32 rstd per row; the backward rebuilds the normalised x from x and rstd.
"""
from __future__ import annotations

import torch

from ._switches import program_slots, use_triton

# ---- torch reference -------------------------------------------------------------------------


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0
                       ) -> torch.Tensor:
    """transformers' LlamaRMSNorm (offset 0) and GemmaRMSNorm (offset 1), op for op."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if offset == 0.0:
        return weight * normed.to(x.dtype)
    return (normed * (offset + weight.float())).type_as(x)


# ---- Triton kernels --------------------------------------------------------------------------

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

if triton is not None:
    @triton.jit
    def _forward_kernel(x_ptr, w_ptr, y_ptr, rstd_ptr, H, stride_x, stride_y, eps, offset,
                        ROUND_BEFORE_WEIGHT: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < H
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, axis=0) / H + eps)
        normed = x * rstd
        if ROUND_BEFORE_WEIGHT:
            normed = normed.to(x_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32) + offset
        tl.store(y_ptr + row * stride_y + cols, (normed * w).to(y_ptr.dtype.element_ty),
                 mask=mask)
        tl.store(rstd_ptr + row, rstd)

    @triton.jit
    def _backward_kernel(dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_ptr, N, H,
                         stride_dy, stride_x, stride_dx, offset, programs,
                         BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < H
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32) + offset
        dw = tl.zeros((BLOCK,), dtype=tl.float32)
        for r in range(pid, N, programs):  # each program owns rows pid, pid + programs, ...
            dy = tl.load(dy_ptr + r * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
            x = tl.load(x_ptr + r * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + r)
            normed = x * rstd
            g = dy * w
            dx = rstd * (g - normed * (tl.sum(g * normed, axis=0) / H))
            tl.store(dx_ptr + r * stride_dx + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            dw += dy * normed
        tl.store(dw_ptr + pid * H + cols, dw, mask=mask)


# ---- launchers -------------------------------------------------------------------------------


def _rows(t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def _warps(block: int) -> int:
    """One warp per 256 columns, 1 to 8: wide rows spread over more threads instead of more
    registers per thread (4 warps on a 4,096-wide backward took 213 registers a thread)."""
    return min(max(block // 256, 1), 8)


def rms_norm_forward_triton(x, weight, eps, offset):
    x2 = _rows(x)
    n, h = x2.shape
    out_dtype = x.dtype if offset != 0.0 else torch.promote_types(weight.dtype, x.dtype)
    y = torch.empty(n, h, device=x.device, dtype=out_dtype)
    rstd = torch.empty(n, device=x.device, dtype=torch.float32)
    block = triton.next_power_of_2(h)
    _forward_kernel[(n,)](x2, weight, y, rstd, h, x2.stride(0), y.stride(0), eps, offset,
                          ROUND_BEFORE_WEIGHT=offset == 0.0, BLOCK=block,
                          num_warps=_warps(block))
    return y.view(*x.shape[:-1], h), rstd


def rms_norm_backward_triton(dy, x, weight, rstd, offset, need_weight: bool):
    x2, dy2 = _rows(x), _rows(dy)
    n, h = x2.shape
    programs = min(n, program_slots(x.device, off_gpu=4))
    dx = torch.empty(n, h, device=x.device, dtype=x.dtype)
    dw_partial = torch.empty(programs, h, device=x.device, dtype=torch.float32)
    block = triton.next_power_of_2(h)
    _backward_kernel[(programs,)](dy2, x2, weight, rstd, dx, dw_partial, n, h,
                                  dy2.stride(0), x2.stride(0), dx.stride(0), offset, programs,
                                  BLOCK=block, num_warps=_warps(block))
    dw = dw_partial.sum(0).to(weight.dtype) if need_weight else None
    return dx.view(x.shape), dw


# ---- autograd --------------------------------------------------------------------------------


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, offset):
        y, rstd = rms_norm_forward_triton(x, weight, eps, offset)
        ctx.save_for_backward(x, weight, rstd)
        ctx.offset = offset
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        dx, dw = rms_norm_backward_triton(dy, x, weight, rstd, ctx.offset,
                                          ctx.needs_input_grad[1])
        return dx, dw, None, None


# ---- public ----------------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *, offset: float = 0.0,
             triton_path: bool | None = None) -> torch.Tensor:
    """RMSNorm over the last dimension; Triton on CUDA, the torch reference elsewhere."""
    if use_triton("rms_norm", x, triton_path):
        return RMSNormFunction.apply(x, weight, float(eps), float(offset))
    return rms_norm_reference(x, weight, eps, offset)
