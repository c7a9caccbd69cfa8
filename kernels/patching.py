"""Put the kernels into a loaded transformers model, one explicit call, nothing at import.

Module-level forwards are replaced per instance (`module.forward = ...`), so only the model
passed in changes. RoPE is a module-level function in each transformers modeling file, so it is
replaced in that file (every model of that architecture in the process sees it); the
replacement falls back to the original math off CUDA or when switched off.
Each patched forward checks its switch at every call (see kernels._switches), so
`AHA_KERNELS=off` gives the unpatched behaviour without reloading the model.
"""
from __future__ import annotations

import sys
import types

import torch

from . import _switches

# model_type -> (RMSNorm class names, RMSNorm adds 1 to its weight, MLP style)
ARCHITECTURES = {
    "llama": (("LlamaRMSNorm",), False, "gate_up_down"),
    "mistral": (("MistralRMSNorm",), False, "gate_up_down"),
    "qwen2": (("Qwen2RMSNorm",), False, "gate_up_down"),
    "qwen3": (("Qwen3RMSNorm",), False, "gate_up_down"),
    "gemma": (("GemmaRMSNorm",), True, "gate_up_down"),
    "phi3": (("Phi3RMSNorm",), False, "fused_gate_up"),
}

_PATCH_MARK = "_aha_kernels_patched"
_ROPE_ORIGINALS: dict[str, object] = {}


def _config(model):
    cfg = getattr(model, "config", None)
    if hasattr(model, "get_base_model"):
        cfg = getattr(model.get_base_model(), "config", cfg)
    return cfg


def _set_forward(module, forward) -> None:
    module.forward = types.MethodType(forward, module)
    setattr(module, _PATCH_MARK, True)


# ---- patched forwards ------------------------------------------------------------------------


def _lora_layer_forward(self, x, *args, **kwargs):
    # Without grad (generation) peft's own forward is the fast one: skip the checks at once.
    if not args and not kwargs and torch.is_grad_enabled():
        from .lora import lora_linear

        out = lora_linear(self, x)
        if out is not None:
            return out
    return type(self).forward(self, x, *args, **kwargs)


def _make_mlp_forward(use_lora: bool, use_swiglu: bool):
    def forward(self, x):
        if use_lora and torch.is_grad_enabled():
            from .lora import lora_mlp

            out = lora_mlp(self, x)
            if out is not None:
                return out
        if use_swiglu and _switches.use_triton("swiglu", x):
            from .lora import _is_silu
            from .swiglu import swiglu

            if _is_silu(self.act_fn):
                return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x), triton_path=True))
        return type(self).forward(self, x)
    return forward


def _make_rms_norm_forward(offset: float):
    def forward(self, x):
        # Off the Triton path the kernel's torch path is transformers' own math: run the
        # original forward itself rather than a copy of it.
        if not _switches.use_triton("rms_norm", x):
            return type(self).forward(self, x)
        from .rms_norm import rms_norm

        eps = getattr(self, "variance_epsilon", getattr(self, "eps", 1e-6))
        return rms_norm(x, self.weight, eps, offset=offset, triton_path=True)
    return forward


def _rope_replacement(original):
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        from .rope import rope

        if args or set(kwargs) - {"unsqueeze_dim"} or not _switches.use_triton("rope", q):
            return original(q, k, cos, sin, *args, **kwargs)
        return rope(q, k, cos, sin, unsqueeze_dim=kwargs.get("unsqueeze_dim", 1),
                    triton_path=True)
    apply_rotary_pos_emb._aha_original = original
    return apply_rotary_pos_emb


# ---- public ----------------------------------------------------------------------------------


def patch_model(model, *, rms_norm: bool = True, rope: bool = True, swiglu: bool = True,
                lora: bool = True) -> dict:
    """Route a supported model's RMSNorm, RoPE, SwiGLU and LoRA layers through kernels/.

    Works on a transformers causal LM or the peft model wrapping one. Returns what was patched:
    {"architecture", "supported", and per kind the number of modules (rope: the modeling
    modules)}. Unsupported architectures are left as they are ("supported": False).
    """
    cfg = _config(model)
    arch = getattr(cfg, "model_type", None)
    report = {"architecture": arch, "supported": arch in ARCHITECTURES, "rms_norm": 0,
              "rope": [], "swiglu_mlp": 0, "lora_mlp": 0, "lora_linear": 0}
    if arch not in ARCHITECTURES:
        return report
    norm_classes, norm_offset, mlp_style = ARCHITECTURES[arch]
    rope_modules = set()
    for module in model.modules():
        name = type(module).__name__
        if rms_norm and name in norm_classes:
            _set_forward(module, _make_rms_norm_forward(1.0 if norm_offset else 0.0))
            report["rms_norm"] += 1
        elif name.endswith("Attention"):
            rope_modules.add(type(module).__module__)
        elif name.endswith("MLP") and mlp_style == "gate_up_down" and (lora or swiglu) \
                and all(hasattr(module, p) for p in ("gate_proj", "up_proj", "down_proj")):
            _set_forward(module, _make_mlp_forward(lora, swiglu))
            report["lora_mlp" if lora else "swiglu_mlp"] += 1
        if lora and hasattr(module, "lora_A") and hasattr(module, "get_base_layer"):
            _set_forward(module, _lora_layer_forward)
            report["lora_linear"] += 1
    if rope:
        for mod_name in sorted(rope_modules):
            mod = sys.modules.get(mod_name)
            current = getattr(mod, "apply_rotary_pos_emb", None)
            if current is None:
                continue
            if not hasattr(current, "_aha_original"):
                _ROPE_ORIGINALS[mod_name] = current
                mod.apply_rotary_pos_emb = _rope_replacement(current)
            report["rope"].append(mod_name)
    return report


def unpatch_model(model) -> int:
    """Undo patch_model on this model (and restore RoPE in the modeling modules it patched)."""
    count = 0
    for module in model.modules():
        if getattr(module, _PATCH_MARK, False):
            del module.forward
            delattr(module, _PATCH_MARK)
            count += 1
    for mod_name, original in list(_ROPE_ORIGINALS.items()):
        mod = sys.modules.get(mod_name)
        if mod is not None:
            mod.apply_rotary_pos_emb = original
        del _ROPE_ORIGINALS[mod_name]
    return count


def is_patched(module: torch.nn.Module) -> bool:
    return bool(getattr(module, _PATCH_MARK, False))
