"""LoRA projections and the LoRA MLP with hand-written gradients, on 4-bit or 16/32-bit bases.

    y = x W^T + b + s (x A^T) B^T          W frozen (maybe 4-bit), A [r, in], B [out, r] trained

Forward keeps only x, the rank-r product xa = x A^T and, for the MLP, the two projections before
the activation. The backward chains every product through the rank-r side first:

    dB = s dy^T xa          [out, r]
    dxa = s dy B            [N, r]
    dA = dxa^T x            [r, in]
    dx = dy W + dxa A       (W dequantized again, never kept)

so no [out, in] product of the adapter and no dequantized base weight outlives a layer's call.
peft's own forward is the reference (tests compare against it); `lora_linear_reference` is the
same sum in plain torch. There is no Triton here: this is matmul-bound work torch already does
well, on CPU as on GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._switches import enabled
from .quant import dense_weight, is_supported_base
from .swiglu import swiglu_backward, swiglu_forward

# ---- torch reference -------------------------------------------------------------------------


def lora_linear_reference(x, weight, bias, lora_a, lora_b, scale):
    """x [.., in], weight [out, in] dense, lora_a [r, in], lora_b [out, r]."""
    return F.linear(x, weight, bias) + scale * F.linear(F.linear(x, lora_a), lora_b)


# ---- which layers qualify --------------------------------------------------------------------


@dataclass(frozen=True)
class LoRASpec:
    """One active vanilla-LoRA adapter on a frozen supported base layer."""
    base: torch.nn.Module
    lora_a: torch.Tensor  # [r, in] parameter
    lora_b: torch.Tensor  # [out, r] parameter
    scale: float

    def compute_dtype(self, x_dtype: torch.dtype) -> torch.dtype:
        return getattr(self.base, "compute_dtype", None) or x_dtype


def lora_spec(module) -> LoRASpec | None:
    """The spec of a peft LoRA layer the hand-written path handles, else None (peft's path).

    Handled: one active adapter, plain LoRA (no DoRA or other variant), dropout 0, no adapter
    bias, not merged, a frozen `nn.Linear` or bitsandbytes `Linear4bit` base, no autocast.
    """
    if not hasattr(module, "lora_A") or getattr(module, "disable_adapters", False) \
            or getattr(module, "merged", False) or torch.is_autocast_enabled():
        return None
    active = module.active_adapters
    if len(active) != 1 or active[0] not in module.lora_A:
        return None
    name = active[0]
    if name in getattr(module, "lora_variant", {}) or getattr(module, "use_dora", {}).get(name):
        return None
    dropout = module.lora_dropout[name]
    if not (isinstance(dropout, torch.nn.Identity)
            or (isinstance(dropout, torch.nn.Dropout) and dropout.p == 0)):
        return None
    a, b = module.lora_A[name], module.lora_B[name]
    if type(a) is not torch.nn.Linear or type(b) is not torch.nn.Linear \
            or a.bias is not None or b.bias is not None:
        return None
    base = module.get_base_layer()
    if not is_supported_base(base) or base.weight.requires_grad \
            or (base.bias is not None and base.bias.requires_grad):
        return None
    return LoRASpec(base, a.weight, b.weight, float(module.scaling[name]))


# ---- the products, shared by both Functions ---------------------------------------------------


def _base_matmul(spec: LoRASpec, x2: torch.Tensor) -> torch.Tensor:
    dtype = spec.compute_dtype(x2.dtype)
    weight = dense_weight(spec.base, dtype)                      # [out, in]
    bias = spec.base.bias
    out = F.linear(x2.to(dtype), weight, None if bias is None else bias.to(dtype))
    return out.to(x2.dtype)


def _forward(spec: LoRASpec, x2, a, b) -> tuple[torch.Tensor, torch.Tensor]:
    """x2 [N, in] -> (y [N, out], xa [N, r])."""
    out = _base_matmul(spec, x2)
    xa = x2.to(a.dtype) @ a.t()                                  # [N, r]
    out += (xa @ b.t()).mul_(spec.scale).to(out.dtype)
    return out, xa


def _backward(spec: LoRASpec, dy, x2, xa, a, b, need_x: bool, need_a: bool, need_b: bool):
    """dy [N, out] -> (dx [N, in] | None, dA [r, in] | None, dB [out, r] | None)."""
    dyl = dy.to(b.dtype)
    grad_b = (dyl.t() @ xa).mul_(spec.scale) if need_b else None  # [out, r]
    grad_x = grad_a = None
    if need_a or need_x:
        dxa = (dyl @ b).mul_(spec.scale)                           # [N, r]
        if need_a:
            grad_a = dxa.t() @ x2.to(a.dtype)                      # [r, in]
        if need_x:
            dtype = spec.compute_dtype(x2.dtype)
            grad_x = (dy.to(dtype) @ dense_weight(spec.base, dtype)).to(x2.dtype)
            grad_x += (dxa @ a).to(x2.dtype)
    return grad_x, grad_a, grad_b


# ---- autograd --------------------------------------------------------------------------------


class LoRALinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a, b, spec):
        x2 = x.reshape(-1, x.shape[-1])
        out, xa = _forward(spec, x2, a, b)
        ctx.save_for_backward(x2, xa, a, b)
        ctx.spec = spec
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, xa, a, b = ctx.saved_tensors
        need_x, need_a, need_b = ctx.needs_input_grad[:3]
        dy = grad.reshape(-1, grad.shape[-1])
        dx, da, db = _backward(ctx.spec, dy, x2, xa, a, b, need_x, need_a, need_b)
        if dx is not None:
            dx = dx.view(*grad.shape[:-1], dx.shape[-1])
        return dx, da, db, None


class LoRAMLPFunction(torch.autograd.Function):
    """down(act(gate(x)) * up(x)) with a LoRA adapter on each of the three projections.

    Saves x, the gate and up outputs and the three rank-r products; the activation and the
    product that feeds `down` are recomputed in backward.
    """

    @staticmethod
    def forward(ctx, x, a_gate, b_gate, a_up, b_up, a_down, b_down, gate, up, down, act):
        x2 = x.reshape(-1, x.shape[-1])
        e, xa_gate = _forward(gate, x2, a_gate, b_gate)          # [N, I], [N, r]
        g, xa_up = _forward(up, x2, a_up, b_up)                  # [N, I], [N, r]
        h = swiglu_forward(e, g) if act is None else act(e) * g  # [N, I]
        y, ha_down = _forward(down, h, a_down, b_down)           # [N, H], [N, r]
        del h
        ctx.save_for_backward(x2, e, g, xa_gate, xa_up, ha_down,
                              a_gate, b_gate, a_up, b_up, a_down, b_down)
        ctx.specs, ctx.act = (gate, up, down), act
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        (x2, e, g, xa_gate, xa_up, ha_down,
         a_gate, b_gate, a_up, b_up, a_down, b_down) = ctx.saved_tensors
        gate, up, down = ctx.specs
        need = ctx.needs_input_grad
        dy = grad.reshape(-1, grad.shape[-1])
        if ctx.act is None:
            h = swiglu_forward(e, g)
        else:
            with torch.enable_grad():
                e_leaf = e.detach().requires_grad_(True)
                activated = ctx.act(e_leaf)
            h = activated.detach() * g
        dh, da_down, db_down = _backward(down, dy, h, ha_down, a_down, b_down,
                                         True, need[5], need[6])
        del h
        if ctx.act is None:
            de, dg = swiglu_backward(dh, e, g)
        else:
            dg = dh * activated.detach()
            de, = torch.autograd.grad(activated, e_leaf, dh * g)
        del dh
        dx_gate, da_gate, db_gate = _backward(gate, de, x2, xa_gate, a_gate, b_gate,
                                              need[0], need[1], need[2])
        del de
        dx_up, da_up, db_up = _backward(up, dg, x2, xa_up, a_up, b_up, need[0], need[3], need[4])
        dx = None
        if need[0]:
            dx = dx_gate.add_(dx_up).view(*grad.shape[:-1], x2.shape[-1])
        return (dx, da_gate, db_gate, da_up, db_up, da_down, db_down,
                None, None, None, None)


# ---- public ----------------------------------------------------------------------------------


def _wants_grad(x, *specs: LoRASpec) -> bool:
    return torch.is_grad_enabled() and (
        x.requires_grad or any(s.lora_a.requires_grad or s.lora_b.requires_grad for s in specs))


def lora_linear(module, x: torch.Tensor) -> torch.Tensor | None:
    """The hand-written path for one peft LoRA layer, or None where peft's path must run.

    None also when no gradient is wanted (generation): bitsandbytes' inference kernels are
    faster there and need no saved tensors.
    """
    if not enabled("lora"):
        return None
    spec = lora_spec(module)
    if spec is None or not _wants_grad(x, spec):
        return None
    return LoRALinearFunction.apply(x, spec.lora_a, spec.lora_b, spec)


def _is_silu(act) -> bool:
    return isinstance(act, torch.nn.SiLU) or type(act).__name__ in ("SiLUActivation", "SiLU")


def lora_mlp(mlp, x: torch.Tensor) -> torch.Tensor | None:
    """The fused path for a gate/up/down MLP whose three projections carry LoRA, or None."""
    if not enabled("lora"):
        return None
    act = getattr(mlp, "act_fn", None)
    if act is None:
        return None
    specs = [lora_spec(getattr(mlp, name, None)) for name in ("gate_proj", "up_proj", "down_proj")]
    if any(s is None for s in specs) or not _wants_grad(x, *specs):
        return None
    gate, up, down = specs
    return LoRAMLPFunction.apply(x, gate.lora_a, gate.lora_b, up.lora_a, up.lora_b,
                                 down.lora_a, down.lora_b, gate, up, down,
                                 None if _is_silu(act) else act)
