"""Every architecture family the presets use, patched by kernels.patch_model: the same GRPO loss
and LoRA gradients as the unpatched model, on the torch paths and through every Triton kernel
(Triton's interpreter on CPU)."""
import pytest
import torch
import transformers

from tests.kernels_helpers import (DEVICE, assert_same_step, grpo_step, kernel_module,
                                   make_batch)

import kernels  # noqa: E402
from core.models import LORA_TARGETS  # noqa: E402

peft = pytest.importorskip("peft")

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            pad_token_id=0, bos_token_id=1, eos_token_id=2)
ARCHITECTURES = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 16}),           # RMSNorm on q and k per head too
    "gemma": ("GemmaConfig", {"head_dim": 16}),           # RMSNorm weight offset by 1, GELU MLP
    "phi3": ("Phi3Config", {"partial_rotary_factor": 0.5}),  # fused qkv / gate_up, partial RoPE
}


def tiny_model(arch: str):
    config_class, extra = ARCHITECTURES[arch]
    config = getattr(transformers, config_class)(**TINY, **extra)
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    base.requires_grad_(False)
    model = peft.get_peft_model(base, peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=LORA_TARGETS[arch], task_type="CAUSAL_LM"))
    with torch.no_grad():  # peft starts B at zero (A would get no gradient): as after some steps
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return model.to(DEVICE).train()


def chunked(hidden, weight, targets, temperature):
    return kernels.selective_log_prob(hidden, weight, targets, temperature, chunk_size=16)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_patched_architecture_trains_like_the_original(arch, monkeypatch):
    calls = set()
    for name, attr, launcher in (
            ("rms_norm", "_forward_kernel", "rms_norm_forward_triton"),
            ("rope", "_rope_kernel", "rope_triton"),
            ("swiglu", "_swiglu_forward_kernel", "swiglu_forward_triton"),
            ("log_prob", "_forward_kernel", "selective_log_prob_forward_triton")):
        module = kernel_module(name, attr)  # interpreted kernels on CPU
        monkeypatch.setattr(module, launcher, lambda *a, _f=getattr(module, launcher), _n=name,
                            **k: calls.add(_n) or _f(*a, **k))
    model = tiny_model(arch)
    batch = make_batch(model.config.vocab_size)
    original = grpo_step(model, batch, chunked)
    report = kernels.patch_model(model)
    try:
        assert report["supported"] and report["rms_norm"] > 0 and report["rope"], report
        if arch == "phi3":  # fused projections: each LoRA layer on its own
            assert report["lora_linear"] == 2 * 4 and report["lora_mlp"] == 0
        else:
            assert report["lora_mlp"] == 2 and report["lora_linear"] == 2 * 7
        assert_same_step(grpo_step(model, batch, chunked), original, atol=1e-6, rtol=1e-4)
        monkeypatch.setenv("AHA_TRITON", "force")
        assert DEVICE == "cuda" or not calls  # off CUDA the torch paths ran
        assert_same_step(grpo_step(model, batch, kernels.selective_log_prob), original,
                    atol=1e-5, rtol=1e-3)
        silu_mlp = arch not in ("gemma", "phi3")  # GELU, or a fused gate/up projection
        assert calls == {"rms_norm", "rope", "log_prob"} | ({"swiglu"} if silu_mlp else set())
    finally:
        kernels.unpatch_model(model)
