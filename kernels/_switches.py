"""Which kernels are on, and whether a call takes the Triton path.

Read at every call, so a benchmark or a test can flip them between two steps:

- ``AHA_KERNELS=off`` (or ``0``, ``false``, ``none``) turns every kernel off: patched models run
  their original forwards and the public functions take the torch path.
- ``AHA_KERNELS_<NAME>=off`` turns one off, NAME in ``SELECTIVE_LOG_PROB``, ``RMS_NORM``,
  ``ROPE``, ``SWIGLU``, ``LORA``.
- ``AHA_TRITON=off`` keeps the kernels' torch paths even on CUDA (the A/B switch for Triton);
  ``AHA_TRITON=force`` takes the Triton path on any device (with ``TRITON_INTERPRET=1`` on CPU:
  how the tests run whole patched models through the kernels without a GPU).
"""
from __future__ import annotations

import functools
import importlib.util
import os

KERNELS = ("selective_log_prob", "rms_norm", "rope", "swiglu", "lora")
_OFF = {"0", "off", "false", "no", "none"}


def _off(variable: str) -> bool:
    return os.environ.get(variable, "").strip().lower() in _OFF


def enabled(name: str) -> bool:
    """Whether the kernel `name` is switched on (both the global and its own switch)."""
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; known: {', '.join(KERNELS)}")
    return not (_off("AHA_KERNELS") or _off(f"AHA_KERNELS_{name.upper()}"))


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Triton is installed (looked up once: a spec search costs a file-system walk, and this
    is asked on every patched forward, hundreds of times per generated token)."""
    return importlib.util.find_spec("triton") is not None


# Set by kernels.compile_check to a GPU's SM count, so launches captured on CPU tensors get the
# grids (and the specialisations that follow from them) they would get on that GPU.
simulated_sm_count: int | None = None


def program_slots(device, off_gpu: int) -> int:
    """How many programs a grid-stride or split kernel launches: two per SM on CUDA; `off_gpu`
    elsewhere (the interpreter runs programs one at a time)."""
    if device.type == "cuda":
        import torch
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return 2 * simulated_sm_count if simulated_sm_count else off_gpu


def interpreting() -> bool:
    """Triton's CPU interpreter is on (tests): Triton kernels then run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in {"1", "true", "on", "yes"}


def use_triton(name: str, tensor, force: bool | None = None,
               min_capability: tuple[int, int] | None = None) -> bool:
    """Take the Triton path for this call? force=True/False overrides the automatic choice.

    Automatic: the kernel is on, Triton is installed, Triton is not switched off, and the tensor
    is on CUDA, on a GPU of at least `min_capability` (compute capability) where one is given.
    Tests force it on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1).
    """
    if force is not None:
        return bool(force)
    if not enabled(name) or _off("AHA_TRITON") or not triton_available():
        return False
    if os.environ.get("AHA_TRITON", "").strip().lower() == "force":
        return True
    if not tensor.is_cuda:
        return False
    if min_capability is None:
        return True
    import torch
    return torch.cuda.get_device_capability(tensor.device) >= min_capability
