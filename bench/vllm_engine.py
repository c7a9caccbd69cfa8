"""Side-by-side benchmark: GRPO steps with the vLLM engine against the transformers engine.

    python bench/vllm_engine.py              # both configs, both engines, one worker each
    python bench/vllm_engine.py --steps 2    # fewer measured steps
    python bench/vllm_engine.py --configs classroom_demo --engines vllm,vllm_colocate \
        --out bench/results/vllm_colocate_cpu.json   # vLLM in its own process / in the trainer's

Engines: transformers; vllm_lora and vllm_merged (vLLM in its own process, the weights sent
as the adapter or merged into the base: generation.vllm_weight_sync); vllm (auto) and
vllm_colocate[_lora|_merged].

Configs: the classroom demo as shipped, and a longer-generation one (the demo with 8 answers of
up to 200 tokens per question). Each (config, engine) runs the real worker
(`python -m core train`) for 1 warm-up step plus N measured steps, in one run, one after the
other on an otherwise idle machine. Per side: generation tokens/s (completion tokens over the
engine's generation time), GRPO step time, the time to hand the new LoRA weights to vLLM, the
engine's start-up, and the peak memory of all the worker's processes together (the worker,
vLLM's server and its engine process), sampled every 0.2 s. `vllm_colocate` is vLLM inside the
training process (generation.vllm_mode: colocate), which trains in the vLLM environment's Python.

Results: bench/results/vllm_engine_cpu.json (ratios are vLLM / transformers).
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
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
DEMO = ROOT / "examples" / "01-classroom-demo.yaml"
CONFIGS = {
    "classroom_demo": [],
    "long_generation": ["grpo.num_generations=8", "grpo.max_completion_length=200",
                        "grpo.temperature=1.0"],
}


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_side(config: str, engine: str, steps: int) -> dict:
    from core.events import read_events

    from core.vllm_engine import vllm_python

    run_dir = Path(tempfile.mkdtemp(prefix=f"bench-vllm-{config}-{engine}-"))
    colocate = "colocate" in engine
    sync = next((s for s in ("lora", "merged") if engine.endswith("_" + s)), "auto")
    cmd = [vllm_python() if colocate else sys.executable, "-m", "core", "train", str(DEMO),
           "--run-dir", str(run_dir), "--max-steps", str(steps + 1),
           "--set", f"generation.engine={engine.split('_')[0]}",
           "--set", f"generation.vllm_weight_sync={sync}",
           "--set", "train.eval_steps=0", "--set", "train.save_steps=0"]
    if colocate:
        cmd += ["--set", "generation.vllm_mode=colocate"]
    for o in CONFIGS[config]:
        cmd += ["--set", o]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    peak = 0
    watcher = psutil.Process(proc.pid)

    def sample():
        nonlocal peak
        while proc.poll() is None:
            try:
                peak = max(peak, _tree_rss(watcher))
            except psutil.Error:
                pass
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _out, err = proc.communicate()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"{config}/{engine} failed: {err.strip().splitlines()[-1:]}")
    events = read_events(run_dir)[0]
    status = {e["state"]: e["time"] for e in events if e["type"] == "status"}
    metrics = [e for e in events if e["type"] == "metrics"][1:]  # without the warm-up step
    tokens = sum(m["completion_tokens"] for m in metrics)
    gen_s = sum(m["generation_time"] for m in metrics)
    ready = next(e for e in events if e["type"] == "status" and e["state"] == "ready")
    out = {
        "config": config, "engine": engine, "measured_steps": len(metrics),
        "engine_used": ready.get("engine"), "weight_sync": ready.get("vllm_weight_sync"),
        "generation_tokens_per_s": round(tokens / gen_s, 1),
        "step_time_s": round(statistics.mean(m["step_time"] for m in metrics), 2),
        "generation_time_s": round(gen_s / len(metrics), 2),
        "completion_tokens_per_step": round(tokens / len(metrics), 1),
        "peak_memory_mb_all_processes": round(peak / 2**20),
        "setup_s": round(status["ready"] - status["loading_data"], 1),
        "wall_s": round(time.time() - started, 1),
    }
    if engine != "transformers":
        out["lora_update_s"] = round(statistics.mean(m["weight_sync_time"] for m in metrics), 3)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3, help="measured steps per side")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated: "
                   + ", ".join(CONFIGS))
    p.add_argument("--engines", default="transformers,vllm_lora,vllm_merged",
                   help="comma-separated: transformers, vllm, vllm_colocate, each vLLM one "
                        "optionally ending in _lora or _merged (generation.vllm_weight_sync; "
                        "else auto); ratios are each against the first")
    p.add_argument("--out", default=str(RESULTS / "vllm_engine_cpu.json"))
    args = p.parse_args()
    from core.vllm_engine import vllm_python
    if vllm_python() is None:
        raise SystemExit("vLLM is not installed: bash scripts/setup.sh --vllm")
    configs, engines = args.configs.split(","), args.engines.split(",")
    load_before = os.getloadavg()
    sides = []
    for config in configs:
        for engine in engines:
            print(f"{config} / {engine} ...", flush=True)
            sides.append(run_side(config, engine, args.steps))
            print(json.dumps(sides[-1]), flush=True)
    ratios = {}
    for config in configs:
        base = next(s for s in sides if s["config"] == config and s["engine"] == engines[0])
        for engine in engines[1:]:
            v = next(s for s in sides if s["config"] == config and s["engine"] == engine)
            ratios.setdefault(config, {})[f"{engine}/{engines[0]}"] = {
                "generation_tokens_per_s": round(v["generation_tokens_per_s"]
                                                 / base["generation_tokens_per_s"], 2),
                "step_time": round(v["step_time_s"] / base["step_time_s"], 2),
                "peak_memory": round(v["peak_memory_mb_all_processes"]
                                     / base["peak_memory_mb_all_processes"], 2)}
    result = {
        "date": _dt.date.today().isoformat(),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "avx512_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text()
                    if Path("/proc/cpuinfo").exists() else None,
                    "cores": os.cpu_count(),
                    "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "sides": sides, "ratios": ratios,
        "targets": {"long_generation tokens/s ratio": ">= 1.7", "lora_update_s": "< 0.2"},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(ratios, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
