"""Per-token log-probs from hidden states and the output head, chunk by chunk.

The naive way builds logits of shape [tokens, vocab] (for a 49k vocabulary that is 200 KB per
token in fp32) and keeps them for the backward pass. Here each chunk of rows is projected,
reduced to (log-prob of the target, log-sum-exp) and dropped; the backward pass recomputes the
chunk's logits. Peak extra memory is one chunk of logits instead of all of them.
"""
from __future__ import annotations

import torch


def naive_selective_log_prob(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             temperature: float = 1.0) -> torch.Tensor:
    """Reference: hidden [N, H], weight [V, H], targets [N] -> log p(target) [N]."""
    logits = (hidden @ weight.t()).float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


class _ChunkedSelectiveLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk_size):
        n = hidden.shape[0]
        logps = hidden.new_empty(n, dtype=torch.float32)
        lse = hidden.new_empty(n, dtype=torch.float32)
        entropy = hidden.new_empty(n, dtype=torch.float32)
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            # One exp pass per chunk and two [c, V] buffers at most, reused in place:
            # shifted logits l - max, then p' = exp(l - max), then p' * (l - max).
            shifted = (hidden[start:end] @ weight.t()).float()                # [c, V]
            if temperature != 1.0:
                shifted.div_(temperature)
            top = shifted.amax(dim=-1, keepdim=True)                          # [c, 1]
            shifted.sub_(top)
            picked = shifted.gather(-1, targets[start:end, None]).squeeze(-1)
            weights = shifted.exp()
            total = weights.sum(-1)                                           # sum p'
            spread = weights.mul_(shifted).sum(-1)                            # sum p' (l - max)
            del shifted, weights
            log_total = total.log()
            lse[start:end] = top.squeeze(-1) + log_total
            logps[start:end] = picked - log_total
            entropy[start:end] = log_total - spread / total                   # -sum p log p
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        ctx.mark_non_differentiable(entropy)
        return logps, entropy

    @staticmethod
    def backward(ctx, grad_logps, _grad_entropy):
        hidden, weight, targets, lse = ctx.saved_tensors
        t, chunk = ctx.temperature, ctx.chunk_size
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        for start in range(0, hidden.shape[0], chunk):
            end = min(start + chunk, hidden.shape[0])
            h = hidden[start:end]
            # d logp_target / d logits = onehot(target) - softmax, then the 1/T of the scaling;
            # built in place in the one [c, V] buffer of recomputed logits.
            g = (h @ weight.t()).float()
            if t != 1.0:
                g.div_(t)
            scale = grad_logps[start:end, None] / t                               # [c, 1]
            g.sub_(lse[start:end, None]).exp_().mul_(-scale)                      # -softmax
            g.scatter_add_(-1, targets[start:end, None], scale.to(g.dtype))       # + onehot
            g = g.to(hidden.dtype)
            if need_h:
                grad_h[start:end] = g @ weight
            if need_w:
                grad_w += (g.t() @ h).float()
            del g
        if need_w:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None


def chunked_selective_log_prob(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               temperature: float = 1.0, chunk_size: int = 256
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [N, H], weight [V, H], targets [N] -> (log p(target) [N], entropy [N], no grad).

    Both in float32 whatever the input dtype. Differentiable w.r.t. hidden (and weight if it
    requires grad).
    """
    return _ChunkedSelectiveLogProb.apply(hidden, weight, targets.long(), float(temperature),
                                          int(chunk_size))
