"""The hand-written LoRA autograd against peft's own LoRA layers, on 32/16-bit and 4-bit bases."""
import copy

import pytest
import torch

import tests.kernels_helpers  # noqa: F401  (sets up Triton's interpreter before kernels/ loads)

bnb = pytest.importorskip("bitsandbytes")
peft = pytest.importorskip("peft")

from kernels import patch_model, unpatch_model  # noqa: E402
from kernels.lora import LoRALinearFunction, lora_linear, lora_mlp, lora_spec  # noqa: E402
from kernels.patching import is_patched  # noqa: E402
from kernels.quant import dense_weight  # noqa: E402


class ToyMLP(torch.nn.Module):
    def __init__(self, hidden, inter, act):
        super().__init__()
        self.gate_proj = torch.nn.Linear(hidden, inter, bias=False)
        self.up_proj = torch.nn.Linear(hidden, inter, bias=False)
        self.down_proj = torch.nn.Linear(inter, hidden, bias=False)
        self.act_fn = act

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class ToyBlock(torch.nn.Module):
    """Odd sizes on purpose: in 80, q out 48 with a bias (as Qwen2's q/k/v), MLP 80 -> 112."""

    def __init__(self, act=None, hidden=80, out=48, inter=112):
        super().__init__()
        self.q_proj = torch.nn.Linear(hidden, out, bias=True)
        self.mlp = ToyMLP(hidden, inter, act or torch.nn.SiLU())

    def forward(self, x):
        return torch.cat([self.q_proj(x), self.mlp(x)], dim=-1)


def to_4bit(linear: torch.nn.Linear) -> torch.nn.Module:
    q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                          compute_dtype=torch.float32, quant_type="nf4", compress_statistics=True)
    q.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False,
                                 quant_type="nf4", compress_statistics=True)
    if linear.bias is not None:
        q.bias = torch.nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    return q.to("cpu")


def quantize_block(block: torch.nn.Module) -> torch.nn.Module:
    block.q_proj = to_4bit(block.q_proj)
    for name in ("gate_proj", "up_proj", "down_proj"):
        setattr(block.mlp, name, to_4bit(getattr(block.mlp, name)))
    return block


def lora_block(base: str, act=None, dropout=0.0, seed=0, **sizes):
    torch.manual_seed(seed)
    block = ToyBlock(act, **sizes)
    if base == "4bit":
        block = quantize_block(block)
    elif base == "bf16":
        block = block.to(torch.bfloat16)
    block.requires_grad_(False)
    config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout,
                             target_modules=["q_proj", "gate_proj", "up_proj", "down_proj"])
    model = peft.get_peft_model(block, config)
    with torch.no_grad():  # peft starts B at zero; give it values so every gradient is non-trivial
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model


def run(model, x):
    x = x.clone().requires_grad_(True)
    y = model(x)
    (y.float() * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return y.detach(), x.grad.clone(), grads


TOL = {"fp32": (1e-5, 1e-4), "4bit": (1e-5, 1e-4), "bf16": (2e-2, 2e-2)}


def assert_close(a, b, kind):
    atol, rtol = TOL[kind]
    torch.testing.assert_close(a.float(), b.float(), atol=atol * max(1.0, b.abs().max().item()),
                               rtol=rtol)


@pytest.mark.parametrize("base", ["fp32", "bf16", "4bit"])
@pytest.mark.parametrize("shape", [(2, 7), (1, 1), (3, 33)])
def test_patched_block_matches_peft(base, shape):
    reference = lora_block(base)
    patched = copy.deepcopy(reference)
    report = patch_model(patched, rms_norm=False, rope=False, swiglu=False) \
        if hasattr(patched, "config") else None
    # ToyBlock has no transformers config; patch the layers directly as patch_model would.
    from kernels.patching import _lora_layer_forward, _make_mlp_forward, _set_forward
    assert report is None or not report["supported"]
    for module in patched.modules():
        if hasattr(module, "lora_A"):
            _set_forward(module, _lora_layer_forward)
        elif isinstance(module, ToyMLP):
            _set_forward(module, _make_mlp_forward(True, False))
    dtype = torch.bfloat16 if base == "bf16" else torch.float32
    x = torch.randn(*shape, 80, generator=torch.Generator().manual_seed(1)).to(dtype)
    y_ref, gx_ref, g_ref = run(reference, x)
    y, gx, g = run(patched, x)
    assert_close(y, y_ref, base)
    assert_close(gx, gx_ref, base)
    assert g.keys() == g_ref.keys() and len(g) == 8
    for name in g:
        assert g_ref[name].abs().sum() > 0, name
        assert_close(g[name], g_ref[name], base)


def test_hand_written_path_is_taken_and_saves_less(monkeypatch):
    model = lora_block("4bit")
    mlp, q = model.base_model.model.mlp, model.base_model.model.q_proj
    x = torch.randn(64, 80, requires_grad=True)
    out = lora_mlp(mlp, x)
    assert out is not None and out.grad_fn.name().endswith("LoRAMLPFunctionBackward")
    assert lora_linear(q, x).grad_fn.name().endswith("LoRALinearFunctionBackward")

    def saved_bytes(fn):
        total = []

        def pack(t):  # activations only: parameters are held by the model anyway
            if t.dtype.is_floating_point and not isinstance(t, torch.nn.Parameter):
                total.append(t.numel() * t.element_size())
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x)
        return sum(total)
    ours = saved_bytes(lambda x: lora_mlp(mlp, x))
    peft_path = saved_bytes(lambda x: type(mlp).forward(mlp, x))
    assert ours < 0.75 * peft_path, (ours, peft_path)


def test_falls_back_to_peft_when_unsupported():
    with_dropout = lora_block("fp32", dropout=0.1)
    q = with_dropout.base_model.model.q_proj
    assert lora_spec(q) is None
    assert lora_linear(q, torch.randn(2, 80, requires_grad=True)) is None
    plain = lora_block("fp32")
    q = plain.base_model.model.q_proj
    assert lora_spec(q) is not None
    with torch.no_grad():  # generation keeps bitsandbytes' / torch's inference path
        assert lora_linear(q, torch.randn(2, 80)) is None
    with plain.disable_adapter():
        assert lora_spec(q) is None


def test_generic_activation_matches_peft():
    gelu = torch.nn.GELU(approximate="tanh")  # Gemma's MLP
    reference = lora_block("fp32", act=gelu)
    patched = copy.deepcopy(reference)
    mlp = patched.base_model.model.mlp
    from kernels.patching import _make_mlp_forward, _set_forward
    _set_forward(mlp, _make_mlp_forward(True, False))
    x = torch.randn(3, 5, 80)
    y_ref, gx_ref, g_ref = run(reference, x)
    y, gx, g = run(patched, x)
    assert_close(y, y_ref, "fp32")
    assert_close(gx, gx_ref, "fp32")
    for name in g:
        assert_close(g[name], g_ref[name], "fp32")


@pytest.mark.skipif(not bnb.functional.has_avx512bf16(),
                    reason="bitsandbytes repacks 4-bit weights only on CPUs with AVX512-BF16")
def test_4bit_cpu_inference_layout_gives_the_same_weight_and_gradients():
    """After a no-grad eval forward bitsandbytes repacks the weight; training must still be right."""
    model = lora_block("4bit", hidden=128, out=96, inter=192)  # sizes the repacking accepts
    q = model.base_model.model.q_proj
    base = q.get_base_layer()
    before = dense_weight(base, torch.float32).clone()
    x = torch.randn(6, 128)
    model.eval()
    with torch.no_grad():
        model(x)
    assert base.weight.quant_state.packing_format_for_cpu
    after = dense_weight(base, torch.float32)
    # the repacked scales are bfloat16: equal up to bf16 rounding of each block's absmax
    torch.testing.assert_close(after, before, atol=0, rtol=2 ** -8)
    model.train()
    xg = x.clone().requires_grad_(True)
    spec = lora_spec(q)
    y = LoRALinearFunction.apply(xg, spec.lora_a, spec.lora_b, spec)
    y.square().sum().backward()
    # reference: the same sum in plain torch with autograd, on the repacked layout's weight
    xr = x.clone().requires_grad_(True)
    a = spec.lora_a.detach().clone().requires_grad_(True)
    b = spec.lora_b.detach().clone().requires_grad_(True)
    yr = torch.nn.functional.linear(xr, after, base.bias) + spec.scale * (xr @ a.t()) @ b.t()
    yr.square().sum().backward()
    torch.testing.assert_close(y, yr, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(xg.grad, xr.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(spec.lora_a.grad, a.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(spec.lora_b.grad, b.grad, atol=1e-4, rtol=1e-4)


def test_patch_and_unpatch_a_tiny_llama(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    base.requires_grad_(False)
    model = peft.get_peft_model(base, peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                           "up_proj", "down_proj"], task_type="CAUSAL_LM"))
    report = patch_model(model)
    assert report["architecture"] == "llama" and report["supported"]
    assert report["lora_linear"] == 14 and report["lora_mlp"] == 2 and report["rms_norm"] == 5
    assert any(m.endswith("modeling_llama") for m in report["rope"])
    assert is_patched(model.base_model.model.model.layers[0].mlp)
    assert unpatch_model(model) == 14 + 2 + 5
    assert not is_patched(model.base_model.model.model.layers[0].mlp)


def test_unknown_architecture_is_left_alone():
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    report = patch_model(model)
    assert report["supported"] is False and report["lora_linear"] == 0
    assert not any(is_patched(m) for m in model.modules())


def _graph_names(tensor) -> set[str]:
    names, todo, seen = set(), [tensor.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        todo.extend(n for n, _ in node.next_functions)
    return names


def test_patched_model_generates_through_the_original_forwards(tiny_model_dir):
    """Without grad (generation) a patched model runs peft's and transformers' own forwards,
    logits equal bit for bit; with grad it takes the hand-written path, to tolerance."""
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    base.requires_grad_(False)
    model = peft.get_peft_model(base, peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                           "up_proj", "down_proj"], task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # peft starts B at zero; make the adapter count
    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    patch_model(model)
    try:
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, reference)
        trained = model(input_ids=ids).logits
        names = _graph_names(trained)
        assert {"LoRALinearFunctionBackward", "LoRAMLPFunctionBackward"} <= names
        torch.testing.assert_close(trained, reference, atol=1e-5, rtol=1e-5)
    finally:
        unpatch_model(model)


def test_bitsandbytes_imports_without_the_hub_kernel_warning():
    """On AVX512-BF16 CPUs bitsandbytes looks for a Hub package named `kernels`, finds this one
    and would log a warning in every run log; kernels/ filters it (elsewhere nothing is logged)."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", "import bitsandbytes"], cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "kernels-community" not in run.stderr
