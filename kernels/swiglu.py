"""SwiGLU: silu(gate) * up, forward and backward, elementwise.

The backward recomputes silu from the saved gate instead of keeping silu(gate) as autograd
would, so one [tokens, intermediate] tensor less is alive between forward and backward.
"""
from __future__ import annotations

import torch

from ._switches import use_triton

# ---- torch reference -------------------------------------------------------------------------


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """What Llama-family MLPs compute between their projections."""
    return torch.nn.functional.silu(gate) * up


def swiglu_backward_reference(grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """d/d gate and d/d up of silu(gate) * up, in float32, cast back to the inputs' dtype."""
    g, u, d = gate.float(), up.float(), grad.float()
    sig = torch.sigmoid(g)
    silu = g * sig
    grad_gate = d * u * sig * (1 + g * (1 - sig))
    return grad_gate.to(gate.dtype), (d * silu).to(up.dtype)


# ---- Triton kernels --------------------------------------------------------------------------

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch path still works
    triton = None

if triton is not None:
    @triton.jit
    def _swiglu_forward_kernel(gate_ptr, up_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(gate_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(up_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        out = g * tl.sigmoid(g) * u
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _swiglu_backward_kernel(grad_ptr, gate_ptr, up_ptr, grad_gate_ptr, grad_up_ptr, n,
                                BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        d = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(gate_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(up_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        sig = tl.sigmoid(g)
        silu = g * sig
        grad_gate = d * u * sig * (1.0 + g * (1.0 - sig))
        tl.store(grad_gate_ptr + offs, grad_gate.to(grad_gate_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_up_ptr + offs, (d * silu).to(grad_up_ptr.dtype.element_ty), mask=mask)


# ---- launchers -------------------------------------------------------------------------------

_BLOCK = 1024


def swiglu_forward_triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)
    n = gate.numel()
    _swiglu_forward_kernel[(triton.cdiv(n, _BLOCK),)](gate, up, out, n, BLOCK=_BLOCK)
    return out


def swiglu_backward_triton(grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    grad, gate, up = grad.contiguous(), gate.contiguous(), up.contiguous()
    grad_gate, grad_up = torch.empty_like(gate), torch.empty_like(up)
    n = gate.numel()
    _swiglu_backward_kernel[(triton.cdiv(n, _BLOCK),)](grad, gate, up, grad_gate, grad_up, n,
                                                       BLOCK=_BLOCK)
    return grad_gate, grad_up


def swiglu_forward(gate, up, *, triton_path: bool | None = None) -> torch.Tensor:
    """Forward only (no autograd), Triton or torch; the LoRA MLP uses it inside its Function."""
    if use_triton("swiglu", gate, triton_path):
        return swiglu_forward_triton(gate, up)
    with torch.no_grad():
        return swiglu_reference(gate, up)


def swiglu_backward(grad, gate, up, *, triton_path: bool | None = None):
    if use_triton("swiglu", gate, triton_path):
        return swiglu_backward_triton(grad, gate, up)
    return swiglu_backward_reference(grad, gate, up)


# ---- autograd --------------------------------------------------------------------------------


class SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return swiglu_forward_triton(gate, up)

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        return swiglu_backward_triton(grad, gate, up)


# ---- public ----------------------------------------------------------------------------------


def swiglu(gate: torch.Tensor, up: torch.Tensor, *, triton_path: bool | None = None
           ) -> torch.Tensor:
    """silu(gate) * up; Triton on CUDA (see kernels._switches), the torch reference elsewhere."""
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError("gate and up must have the same shape and dtype")
    if use_triton("swiglu", gate, triton_path):
        return SwiGLUFunction.apply(gate, up)
    return swiglu_reference(gate, up)
