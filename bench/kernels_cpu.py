"""CPU benchmarks of kernels/: the LoRA autograd against peft's, and log-prob memory.

    python bench/kernels_cpu.py                    # both parts, JSON to bench/results/
    python bench/kernels_cpu.py --part lora --reps 3

Part `lora`: the embedded SmolLM2-135M-Instruct with LoRA r=16 on the attention and MLP
projections (4-bit NF4 base and 32-bit base), one forward + backward of the decoder on a
[batch, seq] batch, peft's layers against `kernels.patch_model(model, lora=True)`, alternating
A/B; median step time, and the bytes autograd saves between forward and backward (counted with
saved-tensor hooks, no gradient checkpointing).

Part `logprob_memory`: peak memory of the per-token log-prob (forward + backward) at the
embedded model's vocabulary (49,152), naive (full logits) against the core's chunked version,
each variant in its own process; peak RSS above the RSS before the call (Linux VmHWM, reset
through /proc/self/clear_refs). Measured for the op alone (hidden states given) and for a
whole GRPO step (decoder forward, log-probs, GRPO loss, backward).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import bitsandbytes
    import peft
    import transformers
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "bitsandbytes": bitsandbytes.__version__}


def load(precision: str):
    from core.config import ModelConfig
    from core.models import load_model

    cfg = ModelConfig(source="default", precision=precision, lora_r=16, lora_alpha=32,
                      gradient_checkpointing=False)
    model = load_model(cfg, seed=0, device=torch.device("cpu")).model
    model.train()
    with torch.no_grad():  # peft starts B at zero; a trained adapter has values there
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    return model


def decoder_step(model, ids):
    from core.models import decoder_and_head

    body, _ = decoder_and_head(model)
    hidden = body(input_ids=ids, use_cache=False).last_hidden_state
    loss = hidden.float().pow(2).mean()
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.item()


def saved_bytes(model, ids) -> int:
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        decoder_step(model, ids)
    return total[0]


def bench_lora(args) -> dict:
    import kernels

    results = {}
    for precision in ("4bit", "32bit"):
        model = load(precision)
        ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq),
                            generator=torch.Generator().manual_seed(0))
        times = {"peft": [], "kernels": []}
        saved = {}
        for variant in ("peft", "kernels"):  # warm-up, memory count
            if variant == "kernels":
                report = kernels.patch_model(model, rms_norm=False, rope=False, swiglu=False)
            decoder_step(model, ids)
            saved[variant] = saved_bytes(model, ids)
            if variant == "kernels":
                kernels.unpatch_model(model)
        for _ in range(args.reps):
            for variant in ("peft", "kernels"):
                if variant == "kernels":
                    kernels.patch_model(model, rms_norm=False, rope=False, swiglu=False)
                start = time.perf_counter()
                decoder_step(model, ids)
                times[variant].append(time.perf_counter() - start)
                if variant == "kernels":
                    kernels.unpatch_model(model)
        med = {k: statistics.median(v) for k, v in times.items()}
        results[precision] = {
            "batch": args.batch, "seq": args.seq, "patched": report,
            "step_s": {k: sorted(v) for k, v in times.items()},
            "median_step_s": med, "speedup": med["peft"] / med["kernels"],
            "saved_activation_mb": {k: v / 2 ** 20 for k, v in saved.items()},
            "saved_ratio": saved["kernels"] / saved["peft"],
        }
        print(precision, json.dumps(results[precision]["median_step_s"]),
              f"speedup {results[precision]['speedup']:.2f}",
              f"saved {results[precision]['saved_ratio']:.2f}x", flush=True)
        del model
    return results


# ---- log-prob memory: one variant per process ----------------------------------------------


def _vm_hwm_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def _vm_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def one_logprob_variant(variant: str, scope: str, tokens: int, tile_rows: int, tile_cols: int
                        ) -> dict:
    """variant naive, or tiled with [tile_rows, tile_cols] tiles of logits (tile_cols 0: the
    whole vocabulary in each tile, i.e. row chunks alone)."""
    import ctypes

    from core.grpo import LossSettings, policy_loss
    from core.logprobs import chunked_selective_log_prob, naive_selective_log_prob
    from core.models import decoder_and_head
    from core.trainer import return_freed_memory_to_os

    return_freed_memory_to_os()  # the allocator settings a training worker runs with
    if scope == "op":
        # Every block over 128 KiB mapped on its own and unmapped when freed: RSS then follows
        # the live tensors, so a variant whose buffers the heap would recycle is not flattered.
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 << 10)

    def logprob(h, w, t):
        if variant == "naive":
            return naive_selective_log_prob(h, w, t, 1.0)
        return chunked_selective_log_prob(h, w, t, 1.0, tile_rows, tile_cols or w.shape[0])[0]

    model = load("4bit")
    body, head = decoder_and_head(model)
    vocab, width = head.weight.shape
    g = torch.Generator().manual_seed(0)
    rows, seq = 8, tokens // 8
    ids = torch.randint(0, vocab, (rows, seq + 1), generator=g)
    targets = ids[:, 1:].reshape(-1)
    advantages = torch.randn(rows, generator=g)

    def op_only():
        hidden = torch.randn(tokens, width, generator=torch.Generator().manual_seed(1),
                             requires_grad=True)
        logprob(hidden, head.weight, targets).sum().backward()

    def grpo_step():
        hidden = body(input_ids=ids[:, :-1], use_cache=False).last_hidden_state  # [b, T, H]
        logps = logprob(hidden.reshape(-1, width), head.weight, targets).view(rows, seq)
        loss, _ = policy_loss(logps, None, None, advantages, torch.ones_like(logps),
                              LossSettings())
        model.zero_grad(set_to_none=True)
        loss.backward()

    run = op_only if scope == "op" else grpo_step
    run()  # warm-up: lazy allocations, thread pools
    base = _vm_rss_mb()
    _reset_peak()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    return {"variant": variant, "scope": scope, "tokens": tokens, "vocab": vocab,
            "tile": None if variant == "naive" else [tile_rows, tile_cols or vocab],
            "peak_above_start_mb": _vm_hwm_mb() - base, "seconds": seconds,
            "logits_fp32_mb": tokens * vocab * 4 / 2 ** 20}


# naive; the core's default tiles; the row chunks alone (the whole vocabulary per tile)
LOGPROB_VARIANTS = (("naive", 0, 0), ("tiled", 1024, 1024), ("tiled", 256, 0))


def bench_logprob_memory(args) -> dict:
    out = {}
    for scope in ("op", "grpo_step"):
        rows = []
        for variant, tile_rows, tile_cols in LOGPROB_VARIANTS:
            cmd = [sys.executable, __file__, "--one",
                   f"{variant},{scope},{args.tokens},{tile_rows},{tile_cols}",
                   "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if done.returncode:
                raise RuntimeError(done.stderr[-2000:])
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(scope, json.dumps(rows[-1]), flush=True)
        naive = rows[0]["peak_above_start_mb"]
        for r in rows:
            r["ratio_to_naive"] = r["peak_above_start_mb"] / naive
        out[scope] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("all", "lora", "logprob_memory"), default="all")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=2048, help="log-prob rows (completion tokens)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "kernels_cpu.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.one:
        variant, scope, tokens, rows, cols = args.one.split(",")
        print(json.dumps(one_logprob_variant(variant, scope, int(tokens), int(rows), int(cols))))
        return
    result = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
              "args": {k: v for k, v in vars(args).items() if k != "one"}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for part, bench in (("lora", bench_lora), ("logprob_memory", bench_logprob_memory)):
        if args.part in ("all", part):
            result[part] = bench(args)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")  # after each part
    print("wrote", args.out)


if __name__ == "__main__":
    main()
