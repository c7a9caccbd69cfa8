"""Log-probs of chosen tokens from hidden states and the output head, never holding logits.

    logits = hidden @ weight^T / T                [N, V]   (never materialised)
    logp[n] = logits[n, target[n]] - lse[n]       lse = logsumexp over the vocabulary
    entropy[n] = lse[n] - sum_v p[n, v] logits[n, v]

Forward: a grid of (row block, vocabulary split) programs; each walks its vocabulary tiles,
computes a [BLOCK_N, BLOCK_V] logits tile in registers (a loop over the hidden size) and folds
it into a running max, sum of exponentials and sum of p * shifted logit (an online
log-sum-exp); the few splits of a row are merged in torch. Only lse [N] is saved.
Backward: a grid of (row block, vocabulary tile) programs recomputes its logits tile, forms
d logp / d logits = (onehot(target) - softmax) * grad / T, and adds its products with the
weight (into grad_hidden) and the hidden states (into grad_weight, only when the head trains)
with atomic adds, so each tile is computed once.

Semantics follow core.logprobs.chunked_selective_log_prob (the torch path used off CUDA):
float32 outputs, entropy without gradient, gradients w.r.t. hidden and weight.
"""
from __future__ import annotations

import torch

from ._switches import program_slots, use_triton

# ---- torch reference -------------------------------------------------------------------------


def selective_log_prob_reference(hidden, weight, targets, temperature: float = 1.0):
    """Materialises the logits: the definition the kernel is tested against."""
    logits = (hidden @ weight.t()).float() / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy.detach()


# ---- Triton kernels --------------------------------------------------------------------------

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

if triton is not None:
    # a finite "minus infinity" keeps 0 * (m_old - m_new) at 0 on the first tile
    _NEG = tl.constexpr(-1.0e30)

    @triton.jit
    def _logits_tile(h_ptr, w_ptr, rows, cols, row_mask, col_mask, H, stride_h, stride_w,
                     inv_temp, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                     BLOCK_H: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            ks = h0 + tl.arange(0, BLOCK_H)
            k_mask = ks < H
            a = tl.load(h_ptr + rows[:, None] * stride_h + ks[None, :],
                        mask=row_mask[:, None] & k_mask[None, :], other=0.0)     # [BN, BH]
            b = tl.load(w_ptr + cols[None, :] * stride_w + ks[:, None],
                        mask=col_mask[None, :] & k_mask[:, None], other=0.0)     # [BH, BV]
            if UPCAST:
                a, b = a.to(tl.float32), b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        return acc * inv_temp

    @triton.jit
    def _forward_kernel(h_ptr, w_ptr, t_ptr, m_ptr, s0_ptr, s1_ptr, tgt_ptr,
                        N, V, H, stride_h, stride_w, inv_temp, v_per_split, splits,
                        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                        PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        pid_n = tl.program_id(0)
        split = tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        rows64 = rows.to(tl.int64)
        target = tl.load(t_ptr + rows64, mask=row_mask, other=-1)
        m = tl.full((BLOCK_N,), _NEG, dtype=tl.float32)
        s0 = tl.zeros((BLOCK_N,), dtype=tl.float32)   # sum exp(l - m)
        s1 = tl.zeros((BLOCK_N,), dtype=tl.float32)   # sum exp(l - m) (l - m)
        picked = tl.zeros((BLOCK_N,), dtype=tl.float32)
        v_begin = split * v_per_split
        v_end = tl.minimum(v_begin + v_per_split, V)
        for v0 in range(v_begin, v_end, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            col_mask = cols < v_end
            logits = _logits_tile(h_ptr, w_ptr, rows64, cols.to(tl.int64), row_mask, col_mask,
                                  H, stride_h, stride_w, inv_temp,
                                  BLOCK_N, BLOCK_V, BLOCK_H, PRECISION, UPCAST)
            logits = tl.where(col_mask[None, :], logits, float("-inf"))
            m_new = tl.maximum(m, tl.max(logits, axis=1))
            alpha = tl.exp(m - m_new)
            shifted = logits - m_new[:, None]
            p = tl.exp(shifted)                                   # 0 on masked columns
            s1 = alpha * (s1 + (m - m_new) * s0) + tl.sum(tl.where(col_mask[None, :],
                                                                    p * shifted, 0.0), axis=1)
            s0 = alpha * s0 + tl.sum(p, axis=1)
            m = m_new
            hit = (cols[None, :] == target[:, None]) & col_mask[None, :]
            picked += tl.sum(tl.where(hit, logits, 0.0), axis=1)
        out = rows64 * splits + split
        tl.store(m_ptr + out, m, mask=row_mask)
        tl.store(s0_ptr + out, s0, mask=row_mask)
        tl.store(s1_ptr + out, s1, mask=row_mask)
        tl.store(tgt_ptr + out, picked, mask=row_mask)

    @triton.jit
    def _backward_kernel(h_ptr, w_ptr, t_ptr, lse_ptr, grad_ptr, dh_ptr, dw_ptr,
                         N, V, H, stride_h, stride_w, inv_temp,
                         BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                         PRECISION: tl.constexpr, UPCAST: tl.constexpr, NEED_DH: tl.constexpr,
                         NEED_DW: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_v = tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        rows64 = rows.to(tl.int64)
        cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
        col_mask = cols < V
        cols64 = cols.to(tl.int64)
        target = tl.load(t_ptr + rows64, mask=row_mask, other=-1)
        lse = tl.load(lse_ptr + rows64, mask=row_mask, other=0.0)
        grad = tl.load(grad_ptr + rows64, mask=row_mask, other=0.0)
        logits = _logits_tile(h_ptr, w_ptr, rows64, cols64, row_mask, col_mask, H,
                              stride_h, stride_w, inv_temp, BLOCK_N, BLOCK_V, BLOCK_H, PRECISION,
                              UPCAST)
        p = tl.exp(logits - lse[:, None])
        onehot = (cols[None, :] == target[:, None]).to(tl.float32)
        g = (onehot - p) * (grad * inv_temp)[:, None]
        g = tl.where(row_mask[:, None] & col_mask[None, :], g, 0.0)
        g = g.to(h_ptr.dtype.element_ty)                          # as the torch path does
        if UPCAST:
            g = g.to(tl.float32)
        for h0 in range(0, H, BLOCK_H):
            ks = h0 + tl.arange(0, BLOCK_H)
            k_mask = ks < H
            if NEED_DH:
                w = tl.load(w_ptr + cols64[:, None] * stride_w + ks[None, :],
                            mask=col_mask[:, None] & k_mask[None, :], other=0.0)  # [BV, BH]
                part = tl.dot(g, w.to(g.dtype), input_precision=PRECISION)  # [BN, BH]
                tl.atomic_add(dh_ptr + rows64[:, None] * H + ks[None, :], part,
                              mask=row_mask[:, None] & k_mask[None, :])
            if NEED_DW:
                h = tl.load(h_ptr + rows64[:, None] * stride_h + ks[None, :],
                            mask=row_mask[:, None] & k_mask[None, :], other=0.0)  # [BN, BH]
                part = tl.dot(tl.trans(g), h.to(g.dtype), input_precision=PRECISION)  # [BV, BH]
                tl.atomic_add(dw_ptr + cols64[:, None] * H + ks[None, :], part,
                              mask=col_mask[:, None] & k_mask[None, :])


# ---- launchers -------------------------------------------------------------------------------

# Triton lowers tl.dot to tensor-core instructions from Ampere (sm_80) on; for Turing and older
# it emits FMA loops (seen in the PTX kernels.compile_check builds), far slower than cuBLAS's
# tensor cores, so there the automatic dispatch takes the chunked torch path instead.
TRITON_MIN_CAPABILITY = (8, 0)


def _blocks(n: int, v: int, h: int, element_size: int = 2) -> tuple[int, int, int]:
    """Tile sizes: tl.dot needs every side >= 16; small problems get small tiles. 4-byte
    inputs take half as deep a k-tile: at 64 the float32 backward needs 102,400 B of shared
    memory, over the 101,376 B of an sm_86/sm_89 GPU (A10G, L4, RTX 30/40; see
    kernels.compile_check)."""
    def fit(x, cap):
        return max(16, min(cap, triton.next_power_of_2(x)))
    return fit(n, 64), fit(v, 128), fit(h, 64 if element_size <= 2 else 32)


def _precision(dtype: torch.dtype) -> str:
    # float32 inputs: no TF32 rounding, as torch's matmul by default; a no-op for 16-bit inputs
    return "ieee"


def _upcast() -> bool:
    # Triton's CPU interpreter gets 16-bit tl.dot wrong; float32 products of 16-bit values are
    # exact, so upcasting there computes what the GPU's 16-bit dot with float32 accumulation does.
    from ._switches import interpreting
    return interpreting()


def selective_log_prob_forward_triton(hidden, weight, targets, temperature):
    """-> (logp [N], entropy [N], lse [N]), float32."""
    n, h = hidden.shape
    v = weight.shape[0]
    block_n, block_v, block_h = _blocks(n, v, h, hidden.element_size())
    row_blocks = triton.cdiv(n, block_n)
    tiles = triton.cdiv(v, block_v)
    splits = max(1, min(tiles, program_slots(hidden.device, off_gpu=1) // row_blocks))
    v_per_split = triton.cdiv(tiles, splits) * block_v
    splits = triton.cdiv(v, v_per_split)
    partial = torch.empty(4, n, splits, device=hidden.device, dtype=torch.float32)
    _forward_kernel[(row_blocks, splits)](
        hidden, weight, targets, partial[0], partial[1], partial[2], partial[3],
        n, v, h, hidden.stride(0), weight.stride(0), 1.0 / temperature, v_per_split, splits,
        BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=block_h, PRECISION=_precision(hidden.dtype),
        UPCAST=_upcast())
    m, s0, s1, picked = partial
    m_all = m.max(dim=1, keepdim=True).values                      # [N, 1]
    scale = torch.exp(m - m_all)
    sum0 = (scale * s0).sum(1)
    sum1 = (scale * (s1 + (m - m_all) * s0)).sum(1)
    log_sum0 = torch.log(sum0)
    lse = m_all.squeeze(1) + log_sum0
    return picked.sum(1) - lse, log_sum0 - sum1 / sum0, lse


def selective_log_prob_backward_triton(grad, hidden, weight, targets, lse, temperature,
                                       need_hidden: bool, need_weight: bool):
    n, h = hidden.shape
    v = weight.shape[0]
    block_n, block_v, block_h = _blocks(n, v, h, hidden.element_size())
    dh = torch.zeros(n, h, device=hidden.device, dtype=torch.float32) if need_hidden else None
    dw = torch.zeros(v, h, device=hidden.device, dtype=torch.float32) if need_weight else None
    _backward_kernel[(triton.cdiv(n, block_n), triton.cdiv(v, block_v))](
        hidden, weight, targets, lse, grad.float().contiguous(),
        dh if need_hidden else lse, dw if need_weight else lse,
        n, v, h, hidden.stride(0), weight.stride(0), 1.0 / temperature,
        BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=block_h, PRECISION=_precision(hidden.dtype),
        UPCAST=_upcast(), NEED_DH=need_hidden, NEED_DW=need_weight)
    return (dh.to(hidden.dtype) if need_hidden else None,
            dw.to(weight.dtype) if need_weight else None)


# ---- autograd --------------------------------------------------------------------------------


class SelectiveLogProbFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature):
        logp, entropy, lse = selective_log_prob_forward_triton(hidden, weight, targets,
                                                               temperature)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature = temperature
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, targets, lse = ctx.saved_tensors
        dh, dw = selective_log_prob_backward_triton(
            grad_logp, hidden, weight, targets, lse, ctx.temperature,
            ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return dh, dw, None, None


# ---- public ----------------------------------------------------------------------------------


def selective_log_prob(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                       temperature: float = 1.0, *, chunk_size: int = 1024,
                       triton_path: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [N, H], weight [V, H], targets [N] -> (log p(target) [N], entropy [N], no grad).

    Triton on CUDA GPUs from TRITON_MIN_CAPABILITY on (see kernels._switches); elsewhere the
    chunked torch version of the core.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} "
                         f"and {tuple(weight.shape)}")
    if hidden.shape[0] == 0 or not use_triton("selective_log_prob", hidden, triton_path,
                                              min_capability=TRITON_MIN_CAPABILITY):
        from core.logprobs import chunked_selective_log_prob

        return chunked_selective_log_prob(hidden, weight, targets, temperature, chunk_size)
    weight = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
    return SelectiveLogProbFunction.apply(hidden.contiguous(), weight.contiguous(),
                                          targets.long().contiguous(), float(temperature))
