"""The Triton selective log-prob against the logits-materialising torch reference."""
import pytest
import torch

from tests.kernels_helpers import DEVICE, kernel_module

slp = kernel_module("log_prob", "_forward_kernel")


def inputs(n, v, h, dtype, weight_grad, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g) * 0.5).to(DEVICE, dtype).requires_grad_(True)
    weight = (torch.randn(v, h, generator=g) * 0.5).to(DEVICE, dtype).requires_grad_(weight_grad)
    targets = torch.randint(0, v, (n,), generator=g).to(DEVICE)
    return hidden, weight, targets


def grads(fn, hidden, weight, targets, temperature):
    h = hidden.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(weight.requires_grad)
    logp, entropy = fn(h, w, targets, temperature)
    upstream = torch.linspace(-1.0, 2.0, logp.shape[0], device=logp.device)
    (logp * upstream).sum().backward()
    return logp.detach(), entropy, h.grad, w.grad


# (N, V, H): a single row, odd sizes that leave partial tiles everywhere, more than one tile
SHAPES = [(1, 50, 16), (37, 1003, 40), (70, 300, 72)]


@pytest.mark.parametrize("n,v,h", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_reference(n, v, h, dtype, temperature):
    hidden, weight, targets = inputs(n, v, h, dtype, weight_grad=(n == 37))
    ref = grads(slp.selective_log_prob_reference, hidden, weight, targets, temperature)
    out = grads(lambda *a: slp.selective_log_prob(*a, triton_path=True),
                hidden, weight, targets, temperature)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    for name, got, want in zip(("logp", "entropy", "grad_hidden", "grad_weight"), out, ref):
        if want is None:
            assert got is None, name
            continue
        assert got.dtype == want.dtype, name
        torch.testing.assert_close(got.float(), want.float(), **tol, msg=name)


def test_vocabulary_splits_merge_exactly(monkeypatch):
    """On a GPU the vocabulary is split across programs; the merge must not change anything."""
    hidden, weight, targets = inputs(20, 777, 24, torch.float32, weight_grad=False)
    whole = slp.selective_log_prob_forward_triton(hidden.detach(), weight, targets, 1.3)
    from kernels import _switches

    monkeypatch.setattr(_switches, "simulated_sm_count", 3)  # 6 program slots -> 4 splits
    assert _switches.program_slots(hidden.device, off_gpu=1) == 6
    split = slp.selective_log_prob_forward_triton(hidden.detach(), weight, targets, 1.3)
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_large_logits_stay_finite():
    hidden, weight, targets = inputs(9, 500, 32, torch.float32, weight_grad=False)
    hidden = (hidden.detach() * 40).requires_grad_(True)  # logits in the hundreds
    ref = grads(slp.selective_log_prob_reference, hidden, weight, targets, 1.0)
    out = grads(lambda *a: slp.selective_log_prob(*a, triton_path=True),
                hidden, weight, targets, 1.0)
    for got, want in zip(out[:3], ref[:3]):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)


def test_dispatch_off_cuda_is_the_core_chunked_version(monkeypatch):
    from core.logprobs import chunked_selective_log_prob

    import kernels

    hidden, weight, targets = inputs(11, 200, 16, torch.float32, weight_grad=False)
    hidden, weight = hidden.cpu(), weight.cpu()
    want = chunked_selective_log_prob(hidden, weight, targets.cpu(), 0.9, 4)
    got = kernels.selective_log_prob(hidden, weight, targets.cpu(), 0.9, chunk_size=4)
    assert got[0].grad_fn.name() == want[0].grad_fn.name()
    torch.testing.assert_close(got, want)
    monkeypatch.setenv("AHA_KERNELS", "off")
    assert not kernels.enabled("selective_log_prob")
    got = kernels.selective_log_prob(hidden, weight, targets.cpu(), 0.9, chunk_size=4)
    assert got[0].grad_fn.name() == want[0].grad_fn.name()


def test_automatic_dispatch_needs_a_gpu_with_tensor_cores(monkeypatch):
    """Triton emits no tensor-core code for tl.dot before sm_80: there the log-prob takes the
    torch path; kernels without a minimum take Triton on any CUDA GPU."""
    from types import SimpleNamespace

    from kernels import _switches

    monkeypatch.setattr(_switches, "triton_available", lambda: True)
    monkeypatch.delenv("AHA_TRITON", raising=False)
    gpu = SimpleNamespace(is_cuda=True, device="cuda:0")
    for capability, want in (((7, 5), False), ((8, 0), True), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        assert _switches.use_triton("selective_log_prob", gpu,
                                    min_capability=slp.TRITON_MIN_CAPABILITY) is want, capability
        assert _switches.use_triton("rms_norm", gpu) is True
