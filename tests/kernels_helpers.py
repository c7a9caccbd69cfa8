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
