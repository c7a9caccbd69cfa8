"""Compile every Triton kernel for NVIDIA GPUs on a machine without one.

The launchers run on CPU tensors with Triton's launch replaced by a recorder, so each kernel is
captured with exactly the arguments, block sizes and specialisations the launcher would give it
for a preset's shapes. Each captured launch is then compiled ahead of time by Triton's own
compiler and ptxas (shipped in the triton wheel) for each architecture, and the cubin's resource
use is read back: registers per thread, spilled (local) bytes, shared memory, warps, how many
blocks fit on one SM, and whether ``tl.dot`` became tensor-core instructions. Everything is
checked against the architecture's limits.

    python -m kernels.compile_check                       # every preset, sm_75/80/86/89/90
    python -m kernels.compile_check --arch 90 --models default,qwen2.5-1.5b --out r.json

It runs without TRITON_INTERPRET (the interpreter replaces the kernels the compiler needs).
It uses Triton 3.9's binder (``create_function_from_signature``, ``JITFunction._pack_args``),
the same calls ``JITFunction.run`` makes, so what compiles is what a launch would compile.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

@dataclasses.dataclass(frozen=True)
class Arch:
    """Per-SM limits of a compute capability (NVIDIA's CUDA C++ Programming Guide), and the SM
    count of the first GPU named, which shapes the launchers' grids."""
    name: str
    gpus: str
    max_shared: int          # bytes of shared memory one block may use (opt-in)
    max_blocks: int          # resident blocks per SM
    max_warps: int           # resident warps per SM
    sms: int
    regs: int = 65536        # registers per SM


ARCHS = {
    75: Arch("sm_75", "T4, RTX 20", 65536, 16, 32, 40),
    80: Arch("sm_80", "A100", 166912, 32, 64, 108),
    86: Arch("sm_86", "A10G, RTX 30", 101376, 16, 48, 80),
    89: Arch("sm_89", "L4, RTX 40", 101376, 24, 48, 58),
    90: Arch("sm_90", "H100, H200", 232448, 32, 64, 132),
}


def dispatched(module: str, arch: int) -> bool:
    """Whether the automatic dispatch runs this module's kernels on `arch` (a module may name a
    minimum compute capability; below it its kernels compile but never run unless forced)."""
    import importlib

    low = getattr(importlib.import_module(f"kernels.{module}"), "TRITON_MIN_CAPABILITY", (0, 0))
    return divmod(arch, 10) >= low


USES_DOT = {"log_prob"}           # modules whose kernels are matmuls (tl.dot)
MAX_REGS_PER_THREAD = 255


@dataclasses.dataclass(frozen=True)
class Shape:
    """What the kernels see of a model: hidden size, heads, head dim, rotary dims, MLP, vocab."""
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    rotary_dim: int | None = None       # partial RoPE (Phi-3-style); None: the whole head
    norm_offset: float = 0.0            # 1.0 for Gemma's RMSNorm
    qk_norm: bool = False               # Qwen3 normalises q and k per head


# The preset models and one model of each other patched architecture.
MODELS = {
    "default": Shape(576, 9, 3, 64, 1536, 49152),                       # SmolLM2-135M
    "smollm2-360m": Shape(960, 15, 5, 64, 2560, 49152),
    "qwen2.5-0.5b": Shape(896, 14, 2, 64, 4864, 151936),
    "qwen3-0.6b": Shape(1024, 16, 8, 128, 3072, 151936, qk_norm=True),
    "llama-3.2-1b": Shape(2048, 32, 8, 64, 8192, 128256),
    "qwen2.5-1.5b": Shape(1536, 12, 2, 128, 8960, 151936),
    "mistral-7b": Shape(4096, 32, 8, 128, 14336, 32768),
    "phi-3-mini": Shape(3072, 32, 32, 96, 8192, 32064),
    "phi-3-partial-rope": Shape(3072, 32, 32, 96, 8192, 32064, rotary_dim=48),
    "gemma-2-2b": Shape(2304, 8, 4, 256, 9216, 256000, norm_offset=1.0),
}


@dataclasses.dataclass
class Launch:
    fn: object                 # the JITFunction
    args: tuple
    kwargs: dict
    grid: tuple


@contextlib.contextmanager
def recording(sm_count: int):
    """Within: a Triton launch is recorded instead of run (no GPU, no compile), and launchers
    size their grids for a GPU of `sm_count` SMs."""
    from triton.runtime.jit import JITFunction

    from kernels import _switches

    launches: list[Launch] = []
    original, original_sms = JITFunction.run, _switches.simulated_sm_count

    def run(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, args, dict(kwargs), tuple(grid)))
        return None

    JITFunction.run, _switches.simulated_sm_count = run, sm_count
    try:
        yield launches
    finally:
        JITFunction.run, _switches.simulated_sm_count = original, original_sms


def capture(shape: Shape, dtype: torch.dtype, sm_count: int, tokens: int = 1024, batch: int = 2
            ) -> list[Launch]:
    """Every Triton launch one forward + backward of each kernel makes at this model's sizes,
    with the grids a GPU of `sm_count` SMs gets."""
    from kernels.log_prob import selective_log_prob
    from kernels.rms_norm import rms_norm
    from kernels.rope import rope
    from kernels.swiglu import swiglu

    seq = tokens // batch
    rd = shape.rotary_dim or shape.head_dim

    def leaf(*size):
        return torch.zeros(*size, dtype=dtype).requires_grad_()

    with recording(sm_count) as launches:
        # RMSNorm over the hidden size, and over the head dim where q/k are normalised
        norms = [(tokens, shape.hidden)]
        if shape.qk_norm:
            norms.append((tokens * shape.heads, shape.head_dim))
        for rows, width in norms:
            x, w = leaf(rows, width), leaf(width)
            rms_norm(x, w, 1e-6, offset=shape.norm_offset, triton_path=True).sum().backward()
        # RoPE on q and k together, [B, H, S, D] as the attention layers call it
        q = leaf(batch, shape.heads, seq, shape.head_dim)
        k = leaf(batch, shape.kv_heads, seq, shape.head_dim)
        cos, sin = torch.zeros(1, seq, rd, dtype=dtype), torch.zeros(1, seq, rd, dtype=dtype)
        qo, ko = rope(q, k, cos, sin, triton_path=True)
        (qo.sum() + ko.sum()).backward()
        # SwiGLU on the MLP's intermediate activations
        gate, up = leaf(tokens, shape.intermediate), leaf(tokens, shape.intermediate)
        swiglu(gate, up, triton_path=True).sum().backward()
        # Selective log-prob: hidden states trainable, the output head frozen (LoRA)
        hidden = leaf(tokens, shape.hidden)
        head = torch.zeros(shape.vocab, shape.hidden, dtype=dtype)
        targets = torch.zeros(tokens, dtype=torch.long)
        logp, _ = selective_log_prob(hidden, head, targets, 1.0, triton_path=True)
        logp.sum().backward()
    return launches


def _compile(launch: Launch, target):
    """What JITFunction.run compiles for this launch, for `target` instead of the current GPU."""
    import triton
    from triton import knobs
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn, kwargs = launch.fn, dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound,
                                                         specialization, options)
    key = (fn.__name__, fn.__module__, repr(signature), repr(constexprs), repr(attrs))
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                              options=options.__dict__)
    return key, compiled, constexprs


def _tool(name: str) -> str:
    import triton.backends.nvidia as nv
    return str(Path(nv.__file__).parent / "bin" / name)


def resource_usage(cubin: bytes) -> dict:
    """Registers, stack, local (spill) and static shared bytes of the cubin's one kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", f.name],
                              capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in text.splitlines() if "REG:" in ln)
    return {k.lower(): int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", line)}


def tensor_core_ops(ptx: str) -> list[str]:
    """Tensor-core instructions in the PTX: wgmma (Hopper), mma.sync (Turing and later)."""
    found = []
    if "wgmma.mma_async" in ptx:
        found.append("wgmma")
    if re.search(r"\bmma\.sync\.", ptx):
        found.append("mma.sync")
    return found


def blocks_per_sm(arch: int, regs: int, warps: int, shared: int) -> int:
    """Resident blocks per SM, from registers, shared memory, warps and the block limit."""
    a = ARCHS[arch]
    by_regs = a.regs // max(1, regs * 32 * warps)
    by_shared = a.max_shared // shared if shared else a.max_blocks
    return max(0, min(by_regs, by_shared, a.max_warps // warps, a.max_blocks))


def check(arch: int, row: dict) -> list[str]:
    """Why this compiled kernel would not run well (or at all) on `arch`; empty when fine, and
    empty for a kernel the dispatch does not use there."""
    max_shared = ARCHS[arch].max_shared
    problems = []
    if not row["dispatched"]:
        return problems
    if row["shared_bytes"] > max_shared:
        problems.append(f"needs {row['shared_bytes']} B of shared memory, {max_shared} B allowed")
    if row["regs"] > MAX_REGS_PER_THREAD:
        problems.append(f"{row['regs']} registers per thread")
    if row["spill_bytes"]:
        problems.append(f"spills {row['spill_bytes']} B per thread to local memory")
    if row["blocks_per_sm"] < 1:
        problems.append("not even one block fits on an SM")
    if row["uses_dot"] and row["dtype"] != "float32" and not row["tensor_cores"]:
        problems.append("tl.dot did not become tensor-core instructions")
    return problems


def describe(arch: int, dtype: torch.dtype, model: str, launch: Launch, compiled,
             constexprs: dict) -> dict:
    """One report row: what was compiled, its resource use, and its problems on `arch`."""
    usage = resource_usage(compiled.asm["cubin"])
    meta = compiled.metadata
    module = launch.fn.__module__.split(".")[-1]
    names = launch.fn.arg_names
    row = {
        "arch": ARCHS[arch].name, "kernel": f"{module}.{launch.fn.__name__}",
        "dtype": str(dtype).replace("torch.", ""), "models": [model],
        "dispatched": dispatched(module, arch),
        "constexprs": {names[k[0]] if len(k) == 1 else str(k): _plain(v)
                       for k, v in constexprs.items()},
        "grid": [int(g) for g in launch.grid],
        "warps": meta.num_warps, "stages": meta.num_stages,
        "regs": usage.get("reg", 0), "spill_bytes": usage.get("local", 0),
        "stack_bytes": usage.get("stack", 0),
        # Triton's dynamic shared memory plus the cubin's static part
        "shared_bytes": int(meta.shared) + usage.get("shared", 0),
        "tensor_cores": tensor_core_ops(compiled.asm["ptx"]),
        "uses_dot": module in USES_DOT,
    }
    row["blocks_per_sm"] = blocks_per_sm(arch, row["regs"], row["warps"], row["shared_bytes"])
    row["problems"] = check(arch, row)
    return row


def line(row: dict) -> str:
    verdict = "; ".join(row["problems"]) or ("ok" if row["dispatched"] else "not dispatched")
    return (f"{row['arch']} {row['dtype']:<8} {row['kernel']:<32} regs {row['regs']:>3} "
            f"spill {row['spill_bytes']:>4} smem {row['shared_bytes']:>6} "
            f"warps {row['warps']} blocks/SM {row['blocks_per_sm']:>2} "
            f"{'+'.join(row['tensor_cores']) or '-':<9} {verdict}")


def compile_all(archs: list[int], models: list[str], dtypes_for=None, tokens: int = 1024,
                log=print) -> dict:
    """Compile each distinct launch of every model for every architecture -> report dict."""
    import triton
    from triton.backends.compiler import GPUTarget

    if os.environ.get("TRITON_INTERPRET", "").strip().lower() in {"1", "true", "on", "yes"}:
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter replaces compiled kernels")
    dtypes_for = dtypes_for or default_dtypes
    rows, seen, started = [], {}, time.perf_counter()
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        for dtype in dtypes_for(arch):
            for model in models:
                for launch in capture(MODELS[model], dtype, ARCHS[arch].sms, tokens=tokens):
                    key, compiled, constexprs = _compile(launch, target)
                    if (arch, key) in seen:         # the same kernel build for another model
                        seen[(arch, key)]["models"].append(model)
                        continue
                    row = seen[(arch, key)] = describe(arch, dtype, model, launch, compiled,
                                                       constexprs)
                    rows.append(row)
                    if log:
                        log(line(row))
    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "triton": triton.__version__, "torch": torch.__version__,
        "archs": {ARCHS[a].name: dataclasses.asdict(ARCHS[a]) for a in archs}, "models": models,
        "tokens": tokens, "seconds": round(time.perf_counter() - started, 1),
        "kernels": rows, "problems": sum(len(r["problems"]) for r in rows),
    }


def default_dtypes(arch: int) -> list[torch.dtype]:
    """The compute dtypes the core trains in there: bf16 from Ampere on (fp16 before), and
    float32 for 32-bit models."""
    return [torch.bfloat16 if arch >= 80 else torch.float16, torch.float32]


def _plain(value):
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default=",".join(str(a) for a in ARCHS),
                        help="compute capabilities, e.g. 80,90")
    parser.add_argument("--models", default=",".join(MODELS), help=", ".join(MODELS))
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--out", default="bench/results/kernels_compile.json")
    args = parser.parse_args(argv)
    archs = [int(a) for a in args.arch.split(",")]
    unknown = [a for a in archs if a not in ARCHS] + [m for m in args.models.split(",")
                                                      if m not in MODELS]
    if unknown:
        parser.error(f"unknown: {unknown}")
    report = compile_all(archs, args.models.split(","), tokens=args.tokens)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"{len(report['kernels'])} kernels compiled in {report['seconds']} s, "
          f"{report['problems']} problems")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
