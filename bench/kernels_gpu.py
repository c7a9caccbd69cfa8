"""GPU benchmarks of kernels/: each Triton kernel against torch eager (and Liger-Kernel when it
is installed), forward + backward, per shape; and the LoRA MLP on a 4-bit base against peft.

    python bench/kernels_gpu.py                        # JSON to bench/results/kernels_gpu.json
    python bench/kernels_gpu.py --only selective_log_prob --reps 50

Needs CUDA, torch, triton; transformers, peft and bitsandbytes for the LoRA part (skipped with
a note when missing); liger-kernel optional. Nothing is downloaded: shapes are synthetic, at
the sizes of the presets (SmolLM2-135M, Qwen2.5-0.5B/1.5B, Llama-3.2-1B).
Time: median of CUDA-event timings after warm-up. Memory: peak allocated during one forward +
backward above what was allocated before it (inputs included in neither).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# (tokens, hidden, vocab): SmolLM2-135M, Qwen2.5-0.5B, Llama-3.2-1B-sized heads
LOGPROB_SHAPES = [(2048, 576, 49152), (4096, 896, 151936), (4096, 2048, 128256)]
NORM_SHAPES = [(4096, 576), (8192, 896), (8192, 2048), (4093, 1000)]
# (batch, seq, q heads, kv heads, head dim)
ROPE_SHAPES = [(8, 512, 9, 3, 64), (8, 1024, 14, 2, 64), (4, 2048, 32, 8, 64)]
SWIGLU_SHAPES = [(4096, 1536), (8192, 4864), (8192, 8192)]
# (tokens, hidden, intermediate, rank)
LORA_MLP_SHAPES = [(4096, 576, 1536, 16), (4096, 896, 4864, 16), (4096, 2048, 8192, 16)]


def measure(fn, reps: int, warmup: int = 3) -> dict:
    """fn() runs forward + backward. -> median ms and peak MB above the start."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    return {"ms": statistics.median(times), "peak_mb": peak / 2 ** 20}


def fwd_bwd(forward, *leaves):
    def run():
        for t in leaves:
            t.grad = None
        out = forward(*leaves)
        out = out if isinstance(out, tuple) else (out,)
        sum(o.float().sum() for o in out if o.requires_grad).backward()
    return run


def try_liger(name):
    try:
        if name == "selective_log_prob":
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

            # -log p(target) per token: the same quantity, without entropy
            def liger(h, w, t, temp):
                out = liger_fused_linear_cross_entropy(h / temp, w, t, reduction="none")
                return out[0] if isinstance(out, tuple) else out
            return liger
        if name == "rms_norm":
            from liger_kernel.ops.rms_norm import LigerRMSNormFunction
            return lambda x, w, eps: LigerRMSNormFunction.apply(x, w, eps)
        if name == "rope":
            from liger_kernel.transformers.rope import liger_rotary_pos_emb
            return liger_rotary_pos_emb
        if name == "swiglu":
            from liger_kernel.ops.swiglu import LigerSiLUMulFunction
            return LigerSiLUMulFunction.apply
    except Exception as exc:  # not installed, or an API change: recorded, not fatal
        return f"unavailable: {type(exc).__name__}: {exc}"[:200]
    return None


def bench_selective_log_prob(reps, dtype):
    from core.logprobs import chunked_selective_log_prob, naive_selective_log_prob
    from kernels.log_prob import selective_log_prob

    liger = try_liger("selective_log_prob")
    rows = []
    for n, h, v in LOGPROB_SHAPES:
        hidden = torch.randn(n, h, device="cuda", dtype=dtype, requires_grad=True)
        weight = torch.randn(v, h, device="cuda", dtype=dtype) * 0.02
        targets = torch.randint(0, v, (n,), device="cuda")
        row = {"shape": {"tokens": n, "hidden": h, "vocab": v}, "dtype": str(dtype)}
        row["torch_naive"] = measure(fwd_bwd(lambda x: naive_selective_log_prob(
            x, weight, targets, 0.9), hidden), reps)
        row["torch_chunked"] = measure(fwd_bwd(lambda x: chunked_selective_log_prob(
            x, weight, targets, 0.9)[0], hidden), reps)
        row["triton"] = measure(fwd_bwd(lambda x: selective_log_prob(
            x, weight, targets, 0.9, triton_path=True)[0], hidden), reps)
        row["liger"] = measure(fwd_bwd(lambda x: liger(x, weight, targets, 0.9), hidden), reps) \
            if callable(liger) else liger
        rows.append(row)
        print("selective_log_prob", json.dumps(row), flush=True)
    return rows


def bench_rms_norm(reps, dtype):
    from kernels.rms_norm import rms_norm, rms_norm_reference

    liger = try_liger("rms_norm")
    rows = []
    for n, h in NORM_SHAPES:
        x = torch.randn(n, h, device="cuda", dtype=dtype, requires_grad=True)
        w = torch.ones(h, device="cuda", dtype=dtype, requires_grad=True)
        row = {"shape": {"rows": n, "hidden": h}, "dtype": str(dtype),
               "torch": measure(fwd_bwd(lambda x, w: rms_norm_reference(x, w, 1e-6), x, w), reps),
               "triton": measure(fwd_bwd(lambda x, w: rms_norm(x, w, 1e-6, triton_path=True),
                                         x, w), reps)}
        row["liger"] = measure(fwd_bwd(lambda x, w: liger(x, w, 1e-6), x, w), reps) \
            if callable(liger) else liger
        rows.append(row)
        print("rms_norm", json.dumps(row), flush=True)
    return rows


def bench_rope(reps, dtype):
    from kernels.rope import rope, rope_reference

    liger = try_liger("rope")
    rows = []
    for b, s, hq, hk, d in ROPE_SHAPES:
        q = torch.randn(b, s, hq, d, device="cuda", dtype=dtype).transpose(1, 2)
        k = torch.randn(b, s, hk, d, device="cuda", dtype=dtype).transpose(1, 2)
        q.requires_grad_(True)
        k.requires_grad_(True)
        pos = torch.arange(s, device="cuda").float()
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device="cuda").float() / d))
        emb = torch.cat([pos[:, None] * inv] * 2, dim=-1)[None].expand(b, s, d)
        cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
        row = {"shape": {"batch": b, "seq": s, "q_heads": hq, "kv_heads": hk, "head_dim": d},
               "dtype": str(dtype),
               "torch": measure(fwd_bwd(lambda q, k: rope_reference(q, k, cos, sin), q, k), reps),
               "triton": measure(fwd_bwd(lambda q, k: rope(q, k, cos, sin, triton_path=True),
                                         q, k), reps)}
        row["liger"] = measure(fwd_bwd(lambda q, k: liger(q, k, cos, sin), q, k), reps) \
            if callable(liger) else liger
        rows.append(row)
        print("rope", json.dumps(row), flush=True)
    return rows


def bench_swiglu(reps, dtype):
    from kernels.swiglu import swiglu, swiglu_reference

    liger = try_liger("swiglu")
    rows = []
    for n, i in SWIGLU_SHAPES:
        gate = torch.randn(n, i, device="cuda", dtype=dtype, requires_grad=True)
        up = torch.randn(n, i, device="cuda", dtype=dtype, requires_grad=True)
        row = {"shape": {"rows": n, "intermediate": i}, "dtype": str(dtype),
               "torch": measure(fwd_bwd(swiglu_reference, gate, up), reps),
               "triton": measure(fwd_bwd(lambda g, u: swiglu(g, u, triton_path=True), gate, up),
                                 reps)}
        row["liger"] = measure(fwd_bwd(liger, gate, up), reps) if callable(liger) else liger
        rows.append(row)
        print("swiglu", json.dumps(row), flush=True)
    return rows


def bench_lora_mlp(reps, dtype):
    try:
        import bitsandbytes as bnb
        import peft
    except ImportError as exc:
        return f"skipped: {exc}"
    from kernels.patching import _make_mlp_forward, _set_forward

    class MLP(torch.nn.Module):
        def __init__(self, h, i):
            super().__init__()
            self.gate_proj = torch.nn.Linear(h, i, bias=False)
            self.up_proj = torch.nn.Linear(h, i, bias=False)
            self.down_proj = torch.nn.Linear(i, h, bias=False)
            self.act_fn = torch.nn.SiLU()

        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    def four_bit(linear):
        q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False,
                              compute_dtype=dtype, quant_type="nf4", compress_statistics=True)
        q.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, quant_type="nf4",
                                     compress_statistics=True)
        return q.cuda()

    rows = []
    for n, h, i, r in LORA_MLP_SHAPES:
        mlp = MLP(h, i)
        for name in ("gate_proj", "up_proj", "down_proj"):
            setattr(mlp, name, four_bit(getattr(mlp, name)))
        mlp.requires_grad_(False)
        model = peft.get_peft_model(mlp, peft.LoraConfig(
            r=r, lora_alpha=2 * r, target_modules=["gate_proj", "up_proj", "down_proj"]))
        model.cuda()
        x = torch.randn(n, h, device="cuda", dtype=dtype, requires_grad=True)
        row = {"shape": {"tokens": n, "hidden": h, "intermediate": i, "rank": r},
               "dtype": str(dtype), "peft": measure(fwd_bwd(model, x), reps)}
        inner = model.base_model.model
        _set_forward(inner, _make_mlp_forward(True, True))
        row["kernels"] = measure(fwd_bwd(model, x), reps)
        rows.append(row)
        print("lora_mlp_4bit", json.dumps(row), flush=True)
    return rows


def copy_bandwidth(reps: int, gib: float = 1.0) -> float:
    """Device-to-device copy rate in GB/s, counting bytes read and written: the ceiling a
    memory-bound kernel is judged against."""
    src = torch.empty(int(gib * 2 ** 30), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = measure(lambda: dst.copy_(src), reps)["ms"]
    return 2 * gib * 2 ** 30 / (ms / 1e3) / 1e9


def bench_bandwidth(reps, dtype):
    """The memory-bound Triton kernels alone (no autograd, no loss): bytes each call must read
    and write, over its time, as a share of the copy rate. Target: at least 0.8."""
    from kernels.rms_norm import rms_norm_backward_triton, rms_norm_forward_triton
    from kernels.rope import rope_triton
    from kernels.swiglu import swiglu_backward_triton, swiglu_forward_triton

    copy = copy_bandwidth(reps)
    size = torch.finfo(dtype).bits // 8
    rows = []

    def add(kernel, shape, fn, nbytes):
        ms = measure(fn, reps)["ms"]
        rate = nbytes / (ms / 1e3) / 1e9
        row = {"kernel": kernel, "shape": shape, "ms": ms, "bytes": nbytes, "gb_per_s": rate,
               "share_of_copy": rate / copy}
        rows.append(row)
        print("bandwidth", json.dumps(row), flush=True)

    for n, h in NORM_SHAPES:
        x = torch.randn(n, h, device="cuda", dtype=dtype)
        w = torch.ones(h, device="cuda", dtype=dtype)
        y, rstd = rms_norm_forward_triton(x, w, 1e-6, 0.0)
        add("rms_norm_forward", [n, h], lambda: rms_norm_forward_triton(x, w, 1e-6, 0.0),
            2 * n * h * size + n * 4)
        add("rms_norm_backward", [n, h],
            lambda: rms_norm_backward_triton(y, x, w, rstd, 0.0, True), 3 * n * h * size + n * 4)
    for b, s, hq, hk, d in ROPE_SHAPES:
        q = torch.randn(b, hq, s, d, device="cuda", dtype=dtype)
        k = torch.randn(b, hk, s, d, device="cuda", dtype=dtype)
        cos = torch.randn(b, s, d, device="cuda", dtype=dtype)
        sin = torch.randn(b, s, d, device="cuda", dtype=dtype)
        add("rope", [b, s, hq, hk, d], lambda: rope_triton(q, k, cos, sin),
            2 * b * s * (hq + hk) * d * size + 2 * b * s * d * size)
    for n, i in SWIGLU_SHAPES:
        gate = torch.randn(n, i, device="cuda", dtype=dtype)
        up = torch.randn(n, i, device="cuda", dtype=dtype)
        grad = torch.randn(n, i, device="cuda", dtype=dtype)
        add("swiglu_forward", [n, i], lambda: swiglu_forward_triton(gate, up), 3 * n * i * size)
        add("swiglu_backward", [n, i], lambda: swiglu_backward_triton(grad, gate, up),
            5 * n * i * size)
    return {"copy_gb_per_s": copy, "rows": rows,
            "min_share_of_copy": min(r["share_of_copy"] for r in rows)}


BENCHES = {"selective_log_prob": bench_selective_log_prob, "rms_norm": bench_rms_norm,
           "rope": bench_rope, "swiglu": bench_swiglu, "lora_mlp_4bit": bench_lora_mlp,
           "bandwidth": bench_bandwidth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=sorted(BENCHES), action="append")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "kernels_gpu.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("kernels_gpu.py needs a CUDA GPU; on CPU run bench/kernels_cpu.py")
    import triton

    dtype = getattr(torch, args.dtype)
    versions = {"torch": torch.__version__, "triton": triton.__version__,
                "python": platform.python_version()}
    for pkg in ("transformers", "peft", "bitsandbytes", "liger_kernel"):
        try:
            versions[pkg] = __import__(pkg).__version__
        except Exception:
            versions[pkg] = None
    result = {"date": _dt.datetime.now().isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(), "versions": versions,
              "dtype": args.dtype, "reps": args.reps}
    for name in args.only or BENCHES:
        result[name] = BENCHES[name](args.reps, dtype)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
