"""The dense weight of a frozen base layer, dequantized on the fly from 4-bit when needed.

bitsandbytes keeps a `Linear4bit` weight in one of two layouts:

- the standard one (what `load_in_4bit` produces, and what CUDA always uses): packed NF4/FP4
  codes plus (possibly double-quantized) block scales; `bnb.functional.dequantize_4bit` reads it.
- on CPUs with AVX512-BF16, the CPU inference layout: the first forward of a layer in eval mode
  without grad repacks it (`quant_state.packing_format_for_cpu = True`): codes reordered in
  32-row tiles, scales transposed to [K / blocksize, N] in bfloat16, no double quantization.
  `dequantize_4bit` does not read that layout, so it is unpacked here, without touching the
  module, so the layer keeps its fast inference kernel for generation.
"""
from __future__ import annotations

import torch

_CPU_TILE_N = 32  # bitsandbytes' block_n for the CPU layout


def _is_4bit(layer) -> bool:
    return getattr(layer.weight, "quant_state", None) is not None or \
        type(layer).__name__ in ("Linear4bit", "LinearNF4", "LinearFP4")


def is_supported_base(layer) -> bool:
    """nn.Linear, or bitsandbytes' Linear4bit; anything else runs its own forward."""
    if _is_4bit(layer):
        try:
            import bitsandbytes as bnb
        except ImportError:
            return False
        return isinstance(layer, bnb.nn.Linear4bit)
    return type(layer) is torch.nn.Linear or (isinstance(layer, torch.nn.Linear)
                                               and type(layer).forward is torch.nn.Linear.forward)


def _quant_state(layer):
    state = getattr(layer.weight, "quant_state", None)
    return state if state is not None else getattr(layer, "quant_state", None)


def _dequantize_cpu_layout(packed: torch.Tensor, state) -> torch.Tensor:
    """Inverse of bitsandbytes' CPU repacking, read-only: [N, K/2] uint8 -> [N, K] float32."""
    n, k = state.shape
    p = packed.reshape(-1, _CPU_TILE_N)
    codes = torch.cat([p & 0xF, p >> 4], dim=-1)                 # [N*K/64, 64]
    codes = codes.reshape(n // _CPU_TILE_N, k // 2, _CPU_TILE_N, 2).transpose(1, 2).reshape(n, k)
    values = state.code.to(packed.device, torch.float32)[codes.long()]  # [N, K]
    scales = state.absmax.t().float()                            # [N, K / blocksize]
    return (values.view(n, k // state.blocksize, state.blocksize) * scales[..., None]).view(n, k)


def dense_weight(layer, dtype: torch.dtype) -> torch.Tensor:
    """The layer's weight as a dense [out, in] tensor of `dtype` (a fresh one for 4-bit)."""
    state = _quant_state(layer)
    if state is None:
        w = layer.weight
        return w if w.dtype == dtype else w.to(dtype)
    if getattr(state, "packing_format_for_cpu", False):
        return _dequantize_cpu_layout(layer.weight.data, state).to(dtype)
    import bitsandbytes.functional as bnbf

    return bnbf.dequantize_4bit(layer.weight.data, state).to(dtype)
