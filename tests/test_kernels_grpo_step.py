"""A whole GRPO step on a tiny Llama: kernels on and off give the same loss and gradients."""
import pytest
import torch

from tests.kernels_helpers import (DEVICE, assert_same_step, grpo_step, kernel_module,
                                   make_batch)

import kernels  # noqa: E402
import kernels.lora as lora_mod  # noqa: E402
from core.config import ModelConfig  # noqa: E402
from core.models import load_model  # noqa: E402


def load(tiny_model_dir, precision, checkpointing):
    cfg = ModelConfig(source=str(tiny_model_dir), precision=precision, lora_r=4, lora_alpha=8,
                      gradient_checkpointing=checkpointing)
    model = load_model(cfg, seed=0, device=torch.device(DEVICE)).model
    model.train()
    with torch.no_grad():  # peft starts B at zero (A would get no gradient): as after some steps
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return model


def chunked(hidden, weight, targets, temperature):
    return kernels.selective_log_prob(hidden, weight, targets, temperature, chunk_size=16)


@pytest.mark.parametrize("precision", ["4bit", "32bit"])
@pytest.mark.parametrize("checkpointing", [True, False])
def test_grpo_step_kernels_on_equals_off(tiny_model_dir, precision, checkpointing, monkeypatch):
    model = load(tiny_model_dir, precision, checkpointing)
    batch = make_batch(model.config.vocab_size)
    loss_off, grads_off = grpo_step(model, batch, chunked)
    report = kernels.patch_model(model)
    assert report["lora_linear"] == 14 and report["lora_mlp"] == 2
    functions = []
    for fn in (lora_mod.LoRALinearFunction, lora_mod.LoRAMLPFunction):
        original = fn.forward
        monkeypatch.setattr(fn, "forward", staticmethod(
            lambda ctx, *a, _o=original, _n=fn.__name__: functions.append(_n) or _o(ctx, *a)))
    loss_on, grads_on = grpo_step(model, batch, chunked)
    # 2 layers: q, k, v, o one by one, the MLP fused (twice with checkpointing: recomputed)
    assert functions.count("LoRALinearFunction") == 8 * (1 + checkpointing)
    assert functions.count("LoRAMLPFunction") == 2 * (1 + checkpointing)
    assert len(grads_on) == 28
    assert_same_step((loss_on, grads_on), (loss_off, grads_off), atol=1e-6, rtol=1e-4,
                     loss_rtol=1e-5)
    kernels.unpatch_model(model)


def test_grpo_step_through_every_triton_kernel(tiny_model_dir, monkeypatch):
    """The patched model with every Triton kernel forced on (interpreted on CPU)."""
    calls = {}
    for name, attr, launcher in (
            ("log_prob", "_forward_kernel", "selective_log_prob_forward_triton"),
            ("rms_norm", "_forward_kernel", "rms_norm_forward_triton"),
            ("rope", "_rope_kernel", "rope_triton"),
            ("swiglu", "_swiglu_forward_kernel", "swiglu_forward_triton")):
        module = kernel_module(name, attr)
        original = getattr(module, launcher)

        def counting(*args, _original=original, _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(module, launcher, counting)
    model = load(tiny_model_dir, "32bit", True)
    batch = make_batch(model.config.vocab_size)
    loss_off, grads_off = grpo_step(model, batch, chunked)
    kernels.patch_model(model)
    monkeypatch.setenv("AHA_TRITON", "force")

    def triton_logprob(hidden, weight, targets, temperature):
        return kernels.selective_log_prob(hidden, weight, targets, temperature)
    try:
        loss_on, grads_on = grpo_step(model, batch, triton_logprob)
    finally:
        kernels.unpatch_model(model)
    assert set(calls) == {"log_prob", "rms_norm", "rope", "swiglu"}, calls
    assert len(grads_on) == 28
    assert_same_step((loss_on, grads_on), (loss_off, grads_off), atol=1e-5, rtol=1e-3,
                     loss_rtol=1e-4)
