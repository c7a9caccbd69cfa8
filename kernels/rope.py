"""Rotary position embedding applied to q and k in one kernel, forward and backward.

    out[:half] = x[:half] cos[:half] - x[half:] sin[:half]
    out[half:] = x[half:] cos[half:] + x[:half] sin[half:]

One program per (batch, position) rotates every q head and every k head there, reading cos and
sin once. The backward is the inverse rotation of the incoming gradient (no saved q or k).
When cos covers fewer dimensions than a head (partial rotary, as in Phi-3), the rest passes
through.
"""
from __future__ import annotations

import torch

from ._switches import use_triton

# ---- torch reference -------------------------------------------------------------------------


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_reference(q, k, cos, sin, unsqueeze_dim: int = 1):
    """transformers' apply_rotary_pos_emb, with Phi-3's partial rotary."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    rd = cos.shape[-1]

    def rotate(x):
        rot = x[..., :rd] * cos + _rotate_half(x[..., :rd]) * sin
        return rot if rd == x.shape[-1] else torch.cat([rot, x[..., rd:]], dim=-1)
    return rotate(q), rotate(k)


# ---- Triton kernels --------------------------------------------------------------------------

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

if triton is not None:
    @triton.jit
    def _rotate_heads(x_ptr, o_ptr, b, s, heads, sx_b, sx_h, sx_s, so_b, so_h, so_s,
                      c1, c2, s1, s2, HALF: tl.constexpr, BLOCK_HEADS: tl.constexpr,
                      BLOCK_HALF: tl.constexpr, BACKWARD: tl.constexpr):
        hs = tl.arange(0, BLOCK_HEADS)
        d = tl.arange(0, BLOCK_HALF)
        mask = (hs[:, None] < heads) & (d[None, :] < HALF)
        src = x_ptr + b * sx_b + s * sx_s + hs[:, None] * sx_h + d[None, :]
        dst = o_ptr + b * so_b + s * so_s + hs[:, None] * so_h + d[None, :]
        x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
        if BACKWARD:  # the transpose of the rotation
            y1 = x1 * c1 + x2 * s2
            y2 = x2 * c2 - x1 * s1
        else:
            y1 = x1 * c1 - x2 * s1
            y2 = x2 * c2 + x1 * s2
        tl.store(dst, y1.to(o_ptr.dtype.element_ty), mask=mask)
        tl.store(dst + HALF, y2.to(o_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_kernel(q_ptr, k_ptr, qo_ptr, ko_ptr, cos_ptr, sin_ptr, S, q_heads, k_heads,
                     sq_b, sq_h, sq_s, sk_b, sk_h, sk_s, sqo_b, sqo_h, sqo_s,
                     sko_b, sko_h, sko_s, sc_b, sc_s,
                     HALF: tl.constexpr, BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr,
                     BLOCK_HALF: tl.constexpr, BACKWARD: tl.constexpr):
        pid = tl.program_id(0)
        b = (pid // S).to(tl.int64)
        s = (pid % S).to(tl.int64)
        d = tl.arange(0, BLOCK_HALF)
        dmask = d < HALF
        c = cos_ptr + b * sc_b + s * sc_s + d
        sn = sin_ptr + b * sc_b + s * sc_s + d
        c1 = tl.load(c, mask=dmask, other=0.0).to(tl.float32)[None, :]
        c2 = tl.load(c + HALF, mask=dmask, other=0.0).to(tl.float32)[None, :]
        s1 = tl.load(sn, mask=dmask, other=0.0).to(tl.float32)[None, :]
        s2 = tl.load(sn + HALF, mask=dmask, other=0.0).to(tl.float32)[None, :]
        _rotate_heads(q_ptr, qo_ptr, b, s, q_heads, sq_b, sq_h, sq_s, sqo_b, sqo_h, sqo_s,
                      c1, c2, s1, s2, HALF, BLOCK_QH, BLOCK_HALF, BACKWARD)
        _rotate_heads(k_ptr, ko_ptr, b, s, k_heads, sk_b, sk_h, sk_s, sko_b, sko_h, sko_s,
                      c1, c2, s1, s2, HALF, BLOCK_KH, BLOCK_HALF, BACKWARD)


# ---- launchers -------------------------------------------------------------------------------


def _bhsd(x, unsqueeze_dim):
    """View as [B, H, S, D] with a unit last stride."""
    x = x if unsqueeze_dim == 1 else x.transpose(1, 2)
    return x if x.stride(-1) == 1 else x.contiguous()


def rope_triton(q, k, cos, sin, unsqueeze_dim: int = 1, backward: bool = False):
    """q [B, Hq, S, D], k [B, Hk, S, D] (or [B, S, H, D] with unsqueeze_dim=2); cos/sin
    [B or 1, S, rd] -> rotated (q, k), new tensors in the input layout."""
    if unsqueeze_dim not in (1, 2) or q.dim() != 4:
        raise ValueError("rope_triton expects 4-D q/k and unsqueeze_dim 1 or 2")
    qv, kv = _bhsd(q, unsqueeze_dim), _bhsd(k, unsqueeze_dim)
    batch, q_heads, seq, head_dim = qv.shape
    k_heads = kv.shape[1]
    rd = cos.shape[-1]
    cos, sin = cos.contiguous(), sin.contiguous()
    if rd % 2 or rd > head_dim or cos.shape[-2] != seq:
        raise ValueError(f"cos/sin of shape {tuple(cos.shape)} do not fit q {tuple(q.shape)}")
    qo = torch.empty(batch, q_heads, seq, head_dim, device=q.device, dtype=q.dtype)
    ko = torch.empty(batch, k_heads, seq, head_dim, device=k.device, dtype=k.dtype)
    if rd < head_dim:
        qo[..., rd:] = qv[..., rd:]
        ko[..., rd:] = kv[..., rd:]
    sc_b = cos.stride(0) if cos.shape[0] > 1 else 0
    _rope_kernel[(batch * seq,)](
        qv, kv, qo, ko, cos, sin, seq, q_heads, k_heads,
        qv.stride(0), qv.stride(1), qv.stride(2), kv.stride(0), kv.stride(1), kv.stride(2),
        qo.stride(0), qo.stride(1), qo.stride(2), ko.stride(0), ko.stride(1), ko.stride(2),
        sc_b, cos.stride(-2), HALF=rd // 2, BLOCK_QH=triton.next_power_of_2(q_heads),
        BLOCK_KH=triton.next_power_of_2(k_heads), BLOCK_HALF=triton.next_power_of_2(rd // 2),
        BACKWARD=backward)
    if unsqueeze_dim == 2:
        qo, ko = qo.transpose(1, 2), ko.transpose(1, 2)
    return qo, ko


# ---- autograd --------------------------------------------------------------------------------


class RoPEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin, unsqueeze_dim):
        ctx.save_for_backward(cos, sin)
        ctx.unsqueeze_dim = unsqueeze_dim
        return rope_triton(q, k, cos, sin, unsqueeze_dim)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        dq, dk = rope_triton(dq, dk, cos, sin, ctx.unsqueeze_dim, backward=True)
        return dq, dk, None, None, None


# ---- public ----------------------------------------------------------------------------------


def rope(q, k, cos, sin, *, unsqueeze_dim: int = 1, triton_path: bool | None = None):
    """Rotate q and k by the position embedding; Triton on CUDA, the torch reference elsewhere."""
    if q.dim() == 4 and unsqueeze_dim in (1, 2) and cos.dim() == 3 \
            and use_triton("rope", q, triton_path):
        return RoPEFunction.apply(q, k, cos, sin, unsqueeze_dim)
    return rope_reference(q, k, cos, sin, unsqueeze_dim)
