"""The tiled log-prob against the naive full-logits computation: values and gradients."""
import pytest
import torch

from core.logprobs import chunked_selective_log_prob, naive_selective_log_prob


@pytest.mark.parametrize("n,h,v,chunk,vocab_chunk,temperature", [
    (37, 16, 101, 7, 16, 0.7),      # 7 vocabulary tiles, the last one 5 wide
    (64, 32, 500, 64, 128, 1.0),
    (5, 8, 33, 1000, 1000, 1.3),    # one tile each way
    (20, 8, 300, 6, 1, 1.0),        # one column per tile: every step rescales the sums
])
def test_matches_naive_values_and_gradients(n, h, v, chunk, vocab_chunk, temperature):
    g = torch.Generator().manual_seed(n)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, v, (n,), generator=g)
    upstream = torch.randn(n, generator=g, dtype=torch.float64)

    ref = naive_selective_log_prob(hidden, weight, targets, temperature).double()
    (ref * upstream).sum().backward()
    ref_gh, ref_gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None

    out, entropy = chunked_selective_log_prob(hidden, weight, targets, temperature, chunk,
                                              vocab_chunk)
    assert torch.allclose(out.double(), ref, atol=1e-5)
    (out.double() * upstream).sum().backward()
    assert torch.allclose(hidden.grad, ref_gh, atol=1e-5)
    assert torch.allclose(weight.grad, ref_gw, atol=1e-5)

    logits = (hidden @ weight.t()).double() / temperature
    p = torch.softmax(logits, -1)
    ref_entropy = -(p * torch.log_softmax(logits, -1)).sum(-1)
    assert torch.allclose(entropy.double(), ref_entropy, atol=1e-4)


def test_frozen_head_gets_no_gradient():
    hidden = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(50, 8)
    out, _ = chunked_selective_log_prob(hidden, weight, torch.randint(0, 50, (10,)), 1.0, 3)
    out.sum().backward()
    assert hidden.grad is not None and weight.grad is None


def test_large_logits_across_tiles_stay_exact():
    """Logits in the hundreds, the largest ones in late tiles: the running sums must be rescaled
    to each new maximum without overflow."""
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(12, 16, generator=g, requires_grad=True)
    weight = torch.randn(400, 16, generator=g) * torch.linspace(1, 30, 400)[:, None]
    targets = torch.randint(0, 400, (12,), generator=g)
    out, entropy = chunked_selective_log_prob(hidden, weight, targets, 1.0, 5, 64)
    ref = naive_selective_log_prob(hidden, weight, targets, 1.0)
    assert torch.isfinite(out).all() and torch.isfinite(entropy).all()
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-5)
