"""RMSNorm, RoPE and SwiGLU Triton kernels against their torch references, values and gradients."""
import pytest
import torch

from tests.kernels_helpers import DEVICE, kernel_module

rms = kernel_module("rms_norm", "_forward_kernel")
rope_mod = kernel_module("rope", "_rope_kernel")
swiglu_mod = kernel_module("swiglu", "_swiglu_forward_kernel")

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def run(fn, *tensors, upstream_seed=7):
    """Call fn on fresh leaves, backprop a fixed random upstream gradient, return out + grads."""
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in tensors]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    g = torch.Generator().manual_seed(upstream_seed)
    loss = sum((o.float() * torch.randn(o.shape, generator=g).to(o.device)).sum() for o in outs)
    loss.backward()
    return [o.detach() for o in outs] + [t.grad for t in leaves if t.requires_grad]


def assert_all_close(got, want, dtype):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.dtype == b.dtype, (i, a.shape, b.shape, a.dtype, b.dtype)
        torch.testing.assert_close(a.float(), b.float(), **TOL[dtype], msg=f"output {i}")


def rand(*shape, dtype=torch.float32, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(DEVICE, dtype).requires_grad_(grad)


@pytest.mark.parametrize("shape", [(1, 8), (3, 5, 33), (17, 100)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_rms_norm(shape, dtype, offset):
    x = rand(*shape, dtype=dtype)
    w = (rand(shape[-1], seed=1, grad=False) * 0.3 + (0.0 if offset else 1.0)).to(dtype)
    w.requires_grad_(True)
    want = run(lambda x, w: rms.rms_norm_reference(x, w, 1e-6, offset), x, w)
    got = run(lambda x, w: rms.rms_norm(x, w, 1e-6, offset=offset, triton_path=True), x, w)
    assert_all_close(got, want, dtype)


def test_rms_norm_fp32_weight_on_bf16_input_promotes_like_llama():
    x, w = rand(4, 24, dtype=torch.bfloat16), rand(24, seed=1)
    want = run(lambda x, w: rms.rms_norm_reference(x, w, 1e-5), x, w)
    got = run(lambda x, w: rms.rms_norm(x, w, 1e-5, triton_path=True), x, w)
    assert got[0].dtype == torch.float32
    assert_all_close(got, want, torch.bfloat16)


def cos_sin(batch, seq, rd, dtype, seed=3):
    # built as transformers' rotary embeddings build them: the frequencies twice
    pos = torch.randint(0, 100, (batch, seq), generator=torch.Generator().manual_seed(seed))
    inv = 1.0 / (10000 ** (torch.arange(0, rd, 2).float() / rd))
    freqs = pos[..., None].float() * inv
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(DEVICE, dtype), emb.sin().to(DEVICE, dtype)


@pytest.mark.parametrize("b,hq,hk,s,d,rd", [(1, 1, 1, 1, 8, 8), (2, 4, 2, 7, 16, 16),
                                            (3, 6, 3, 5, 24, 24), (2, 3, 1, 9, 32, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope(b, hq, hk, s, d, rd, dtype):
    q, k = rand(b, hq, s, d, dtype=dtype), rand(b, hk, s, d, dtype=dtype, seed=1)
    cos, sin = cos_sin(b, s, rd, dtype)
    want = run(lambda q, k: rope_mod.rope_reference(q, k, cos, sin), q, k)
    got = run(lambda q, k: rope_mod.rope(q, k, cos, sin, triton_path=True), q, k)
    assert_all_close(got, want, dtype)


def test_rope_on_transposed_views_and_seq_major_layout():
    """q/k as attention makes them (a transpose of [B, S, H, D]), and unsqueeze_dim=2."""
    q = rand(2, 5, 4, 16).detach().transpose(1, 2).requires_grad_(True)
    k = rand(2, 5, 2, 16, seed=1).detach().transpose(1, 2).requires_grad_(True)
    cos, sin = cos_sin(1, 5, 16, torch.float32)
    want = run(lambda q, k: rope_mod.rope_reference(q, k, cos, sin), q, k)
    got = run(lambda q, k: rope_mod.rope(q, k, cos, sin, triton_path=True), q, k)
    assert_all_close(got, want, torch.float32)
    qs, ks = rand(2, 5, 4, 16), rand(2, 5, 2, 16, seed=1)  # [B, S, H, D]
    want = run(lambda q, k: rope_mod.rope_reference(q, k, cos, sin, 2), qs, ks)
    got = run(lambda q, k: rope_mod.rope(q, k, cos, sin, unsqueeze_dim=2, triton_path=True),
              qs, ks)
    assert_all_close(got, want, torch.float32)


def test_rope_matches_transformers():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    q, k = rand(2, 4, 6, 16), rand(2, 2, 6, 16, seed=1)
    cos, sin = cos_sin(2, 6, 16, torch.float32)
    want = run(lambda q, k: apply_rotary_pos_emb(q, k, cos, sin), q, k)
    got = run(lambda q, k: rope_mod.rope(q, k, cos, sin, triton_path=True), q, k)
    assert_all_close(got, want, torch.float32)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7, 45), (1030,)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu(shape, dtype):
    gate, up = rand(*shape, dtype=dtype), rand(*shape, dtype=dtype, seed=1)
    want = run(swiglu_mod.swiglu_reference, gate, up)
    got = run(lambda g, u: swiglu_mod.swiglu(g, u, triton_path=True), gate, up)
    assert_all_close(got, want, dtype)


def test_swiglu_backward_launcher_matches_autograd():
    """The launcher the LoRA MLP calls directly, outside autograd."""
    gate, up, grad = rand(5, 33), rand(5, 33, seed=1), rand(5, 33, seed=2, grad=False)
    want = torch.autograd.grad(swiglu_mod.swiglu_reference(gate, up), (gate, up), grad)
    got = swiglu_mod.swiglu_backward(grad, gate.detach(), up.detach(), triton_path=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(swiglu_mod.swiglu_forward(gate, up, triton_path=True),
                               swiglu_mod.swiglu_reference(gate, up).detach())
