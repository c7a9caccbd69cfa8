"""Shared set-up for the kernel tests: Triton's interpreter on machines without CUDA."""
import importlib
import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    # triton.jit reads this when a kernel is defined, so it is set before kernels/ is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICE = "cuda" if ON_GPU else "cpu"
TRITON_MISSING = "Triton is not installed (pip install -r requirements-dev.txt; Linux only)"


def kernel_module(name: str, kernel_attr: str):
    """Import kernels.<name>, reloaded if it was imported before the interpreter was switched on."""
    pytest.importorskip("triton", reason=TRITON_MISSING)
    module = importlib.import_module(f"kernels.{name}")
    if not ON_GPU and type(getattr(module, kernel_attr)).__name__ != "InterpretedFunction":
        module = importlib.reload(module)
    return module


def grpo_step(model, batch, logprob):
    """Forward, per-token log-probs of the completions, the GRPO loss, backward.
    -> (loss, {name: gradient}) of the trainable parameters."""
    from core.grpo import LossSettings, policy_loss
    from core.models import decoder_and_head

    input_ids, attention_mask, completion_mask, prompt_width, advantages = batch
    body, head = decoder_and_head(model)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask,
                  position_ids=position_ids, use_cache=False).last_hidden_state
    hidden = hidden[:, prompt_width - 1:-1]
    targets = input_ids[:, prompt_width:]
    selected = completion_mask.bool()
    logps, _ = logprob(hidden[selected], head.weight, targets[selected], 0.8)
    full = torch.zeros(selected.shape, dtype=torch.float32, device=logps.device)
    full = full.masked_scatter(selected, logps)
    noise = torch.randn(full.shape, generator=torch.Generator().manual_seed(3))
    old = full.detach() + 0.05 * noise.to(full.device)
    loss, _ = policy_loss(full, old, None, advantages, completion_mask,
                          LossSettings(loss_type="dapo", max_completion_length=8))
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def make_batch(vocab):
    """4 rows of 5 prompt + 8 completion tokens: left padding, one early stop."""
    g = torch.Generator().manual_seed(0)
    b, tp, tc = 4, 5, 8
    ids = torch.randint(0, vocab, (b, tp + tc), generator=g)
    attention = torch.ones(b, tp + tc, dtype=torch.long)
    attention[0, :2] = 0  # left padding of a shorter prompt
    completion = torch.ones(b, tc, dtype=torch.long)
    completion[1, 5:] = 0  # a completion that stopped early
    attention[1, tp + 5:] = 0
    advantages = torch.tensor([1.0, -0.5, 0.25, -0.75])
    return (ids.to(DEVICE), attention.to(DEVICE), completion.to(DEVICE), tp,
            advantages.to(DEVICE))


def assert_same_step(step, reference, atol, rtol, loss_rtol=None):
    """Two grpo_step results agree: the loss (to loss_rtol, else rtol) and every gradient, and
    no reference gradient is all zero (which would make the comparison empty)."""
    (loss, grads), (ref_loss, ref_grads) = step, reference
    torch.testing.assert_close(loss, ref_loss, atol=atol,
                               rtol=rtol if loss_rtol is None else loss_rtol)
    assert grads.keys() == ref_grads.keys() and grads
    for name in grads:
        assert ref_grads[name].abs().sum() > 0, name
        torch.testing.assert_close(grads[name], ref_grads[name], atol=atol, rtol=rtol, msg=name)
