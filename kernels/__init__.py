"""Training kernels: selective log-prob, RMSNorm, RoPE, SwiGLU (Triton on CUDA, torch
elsewhere) and LoRA layers with hand-written gradients (plain torch, CPU and GPU).

Import-light on purpose: nothing here imports triton, transformers or bitsandbytes until a
function is called (bitsandbytes probes a package named `kernels`, and this one shadows it).

    import kernels
    kernels.patch_model(model)                     # -> {"rms_norm": 9, "lora_linear": 28, ...}
    logps, entropy = kernels.selective_log_prob(hidden, head.weight, targets, temperature)

Switches (read at every call): AHA_KERNELS=off, AHA_KERNELS_<NAME>=off, AHA_TRITON=off; see
kernels/_switches.py.
"""
from __future__ import annotations

import logging


class _NoHubKernelWarning(logging.Filter):
    """bitsandbytes (on AVX512-BF16 CPUs) tries `from kernels import get_kernel` to fetch an
    optional kernel from the Hub; that finds this package and fails, and would need the network
    anyway. Its fallback is the normal path, so its warning is only noise in the run logs.
    bitsandbytes imports this package right before it logs, so the filter is always in time."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NoHubKernelWarning())


def patch_model(model, *, rms_norm: bool = True, rope: bool = True, swiglu: bool = True,
                lora: bool = True) -> dict:
    """See kernels.patching.patch_model."""
    from .patching import patch_model as _patch

    return _patch(model, rms_norm=rms_norm, rope=rope, swiglu=swiglu, lora=lora)


def unpatch_model(model) -> int:
    from .patching import unpatch_model as _unpatch

    return _unpatch(model)


def selective_log_prob(hidden, weight, targets, temperature: float = 1.0, *,
                       chunk_size: int = 1024, triton_path: bool | None = None):
    """hidden [N, H], weight [V, H], targets [N] -> (log p(target) [N], entropy [N]), float32.

    Triton (tiled, online log-sum-exp, no logits in memory) on CUDA; elsewhere, or switched
    off, core.logprobs.chunked_selective_log_prob with chunk_size.
    """
    from .log_prob import selective_log_prob as _slp

    return _slp(hidden, weight, targets, temperature, chunk_size=chunk_size,
                triton_path=triton_path)


def enabled(name: str) -> bool:
    from ._switches import enabled as _enabled

    return _enabled(name)


__all__ = ["patch_model", "unpatch_model", "selective_log_prob", "enabled"]
