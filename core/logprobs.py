"""Per-token log-probs from hidden states and the output head, tile by tile.

The naive way builds logits of shape [tokens, vocab] (for a 49k vocabulary that is 200 KB per
token in fp32) and keeps them for the backward pass. Here the logits are built one tile of
[rows, vocabulary columns] at a time and folded into running per-row sums (an online
log-sum-exp, as the Triton kernel in kernels/log_prob.py does on GPUs); the backward pass
recomputes each tile. Peak extra memory is one or two tiles, whatever the vocabulary size.
"""
from __future__ import annotations

import torch


def naive_selective_log_prob(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             temperature: float = 1.0) -> torch.Tensor:
    """Reference: hidden [N, H], weight [V, H], targets [N] -> log p(target) [N]."""
    logits = (hidden @ weight.t()).float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _vocab_chunk(device: torch.device) -> int:
    # CPU: [rows, 1024] float32 tiles stay in cache for the exp pass (4 MB at 1,024 rows).
    # CUDA (GPUs without the Triton kernel): wider tiles, fewer launches.
    return 16384 if device.type == "cuda" else 1024


def _targets_in_tile(targets: torch.Tensor, v0: int, v1: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Which targets fall in vocabulary columns [v0, v1) -> (mask [c, 1], column in tile
    [c, 1], clamped into the tile for the rows whose target lies elsewhere)."""
    return (((targets >= v0) & (targets < v1))[:, None],
            (targets - v0).clamp(0, v1 - v0 - 1)[:, None])


class _ChunkedSelectiveLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk_size, vocab_chunk):
        n, v = hidden.shape[0], weight.shape[0]
        logps = hidden.new_empty(n, dtype=torch.float32)
        lse = torch.empty_like(logps)
        entropy = torch.empty_like(logps)
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            h, t = hidden[start:end], targets[start:end]
            # Online over vocabulary tiles, per row: running max m, s0 = sum exp(l - m),
            # s1 = sum exp(l - m) (l - m), and the target's logit. One exp pass per tile.
            m = s0 = s1 = None
            picked = torch.zeros(end - start, 1, dtype=torch.float32, device=hidden.device)
            for v0 in range(0, v, vocab_chunk):
                v1 = min(v0 + vocab_chunk, v)
                tile = (h @ weight[v0:v1].t()).float()                      # [c, vt]
                if temperature != 1.0:
                    tile.div_(temperature)
                inside, column = _targets_in_tile(t, v0, v1)
                picked = torch.where(inside, tile.gather(1, column), picked)
                m_new = tile.amax(1) if m is None else torch.maximum(m, tile.amax(1))
                shifted = tile.sub_(m_new[:, None])
                p = shifted.exp()
                tile_s0 = p.sum(1)
                tile_s1 = p.mul_(shifted).sum(1)
                del tile, shifted, p
                if m is None:
                    s0, s1 = tile_s0, tile_s1
                else:                       # rescale the running sums to the new max
                    d = m - m_new
                    alpha = d.exp()
                    s1 = alpha * (s1 + d * s0) + tile_s1
                    s0 = alpha * s0 + tile_s0
                m = m_new
            log_s0 = s0.log()
            lse[start:end] = m + log_s0
            logps[start:end] = picked.squeeze(1) - lse[start:end]
            entropy[start:end] = log_s0 - s1 / s0                           # -sum p log p
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.chunk_size, ctx.vocab_chunk = temperature, chunk_size, vocab_chunk
        ctx.mark_non_differentiable(entropy)
        return logps, entropy

    @staticmethod
    def backward(ctx, grad_logps, _grad_entropy):
        hidden, weight, targets, lse = ctx.saved_tensors
        temperature, rows, cols = ctx.temperature, ctx.chunk_size, ctx.vocab_chunk
        n, v = hidden.shape[0], weight.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        for start in range(0, n, rows):
            end = min(start + rows, n)
            h, t = hidden[start:end], targets[start:end]
            scale = grad_logps[start:end, None] / temperature                      # [c, 1]
            acc = (torch.zeros(end - start, hidden.shape[1], dtype=torch.float32,
                               device=hidden.device) if need_h else None)
            for v0 in range(0, v, cols):
                v1 = min(v0 + cols, v)
                w = weight[v0:v1]
                # d logp_target / d logits = onehot(target) - softmax, times 1/T, built in
                # place in the one [c, vt] buffer of recomputed logits.
                g = (h @ w.t()).float()
                if temperature != 1.0:
                    g.div_(temperature)
                g.sub_(lse[start:end, None]).exp_().mul_(-scale)                   # -softmax
                inside, column = _targets_in_tile(t, v0, v1)
                g.scatter_add_(1, column, torch.where(inside, scale, 0.0).to(g.dtype))  # + onehot
                g = g.to(hidden.dtype)
                if need_h:
                    if g.dtype == acc.dtype:
                        acc.addmm_(g, w)
                    else:
                        acc += (g @ w).float()
                if need_w:
                    grad_w[v0:v1] += (g.t() @ h).float()
                del g
            if need_h:
                grad_h[start:end] = acc
        if need_w:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None


def chunked_selective_log_prob(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               temperature: float = 1.0, chunk_size: int = 1024,
                               vocab_chunk: int | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [N, H], weight [V, H], targets [N] -> (log p(target) [N], entropy [N], no grad).

    Both in float32 whatever the input dtype. Differentiable w.r.t. hidden (and weight if it
    requires grad). Works on [chunk_size, vocab_chunk] tiles of logits at a time.
    """
    vocab_chunk = int(vocab_chunk or _vocab_chunk(hidden.device))
    return _ChunkedSelectiveLogProb.apply(hidden, weight, targets.long(), float(temperature),
                                          int(chunk_size), vocab_chunk)
