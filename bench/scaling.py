"""Steps per hour and peak memory per process: one process against several, same global batch.

The classroom demo (`examples/01-classroom-demo.yaml`, the embedded model in 4-bit) trains the
same steps, seed and global batch twice in one run of this script: on one process with every
core, then through `accelerate launch --multi_gpu --num_processes N` (gloo on a CPU, NCCL on
GPUs) with the cores shared among the processes. Each process's resident memory is sampled
every 0.2 s (psutil) beside the trainer's own peak figure; steps per hour count the steps after
the first (loading and the first step's warm-up left out). The two adapters are compared too:
the same run, to float rounding.

    python bench/scaling.py [--processes 2] [--steps 4] [--config examples/01-classroom-demo.yaml]
    python bench/scaling.py --sharded --precision 32bit    # the N processes sharded (FSDP)

Sharded (`--sharded`: accelerate launch --use_fsdp, FSDP2), each process holds 1/N of every
weight; FSDP needs a 16- or 32-bit base (`--precision`, for both runs), and both runs then train with
torch's AdamW (8-bit Adam cannot update slices). Besides the peak, each
process's median resident memory over the run is recorded: on a CPU every process first loads
the whole model and then keeps only its slices, so the peak shows the load and the median what
training holds.

On a machine with several GPUs, the same command gives the scaling efficiency:
(steps per hour with N) / (N x steps per hour with 1).

Result: bench/results/scaling_<cpu|gpu>[_fsdp].json (runs in bench/results/scaling_runs/,
ignored).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.learning_study import machine  # noqa: E402
from core.events import read_events  # noqa: E402
from core.runs import launch_prefix  # noqa: E402
from studio.machine import cpu_name  # noqa: E402

RESULTS = ROOT / "bench" / "results"
RUNS = RESULTS / "scaling_runs"


def watch_memory(pid: int, peaks: dict, stop: threading.Event, samples: dict | None = None
                 ) -> None:
    """Peak resident memory (MB) of each training process under `pid`, by its rank (and every
    sample, into `samples`)."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        try:
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for proc in procs:
            try:
                cmd = proc.cmdline()
                if "core" not in cmd or "train" not in cmd or "accelerate.commands.launch" in \
                        " ".join(cmd):
                    continue
                rank = proc.environ().get("RANK") or proc.environ().get("LOCAL_RANK") or "0"
                rss = proc.memory_info().rss / 2**20
                peaks[rank] = max(peaks.get(rank, 0.0), rss)
                if samples is not None:
                    samples.setdefault(rank, []).append(rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        stop.wait(0.2)


def run(config: Path, processes: int, steps: int, name: str, sharded: bool = False,
        precision: str | None = None, settings: tuple = ()) -> dict:
    run_dir = RUNS / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = launch_prefix(processes, sharded=sharded) + [
        "core", "train", str(config), "--run-dir", str(run_dir), "--max-steps", str(steps),
        "--set", "train.eval_steps=0", "--set", "train.save_steps=0"]
    if precision:
        cmd += ["--set", f"model.precision={precision}"]
    for setting in settings:
        cmd += ["--set", setting]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    env.update(HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    peaks: dict = {}
    samples: dict = {}
    stop = threading.Event()
    started = time.time()
    run_dir.mkdir(parents=True)
    with open(run_dir.parent / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        watcher = threading.Thread(target=watch_memory, args=(proc.pid, peaks, stop, samples))
        watcher.start()
        code = proc.wait()
        stop.set()
        watcher.join()
    if code:
        raise SystemExit(f"{name} failed; see {run_dir.parent / f'{name}.log'}")
    events = read_events(run_dir)[0]
    metrics = [e for e in events if e["type"] == "metrics"]
    ready = next(e for e in events if e["type"] == "status" and e["state"] == "ready")
    timed = metrics[1:] or metrics
    seconds = sum(m["step_time"] for m in timed) / len(timed)
    return {
        "processes": ready["world_size"], "threads_per_process": ready["threads"],
        "backend": ready.get("backend"), "steps": len(metrics),
        "seconds_per_step": round(seconds, 2), "steps_per_hour": round(3600 / seconds, 1),
        "step_times": [round(m["step_time"], 2) for m in metrics],
        "peak_rss_mb_per_process": {k: round(v) for k, v in sorted(peaks.items())},
        "median_rss_mb_per_process": {k: round(sorted(v)[len(v) // 2])
                                      for k, v in sorted(samples.items())},
        "sharding": ready.get("sharding"), "params_per_process": ready.get("params_per_process"),
        "optimizer": ready.get("optimizer"),
        "peak_memory_mb_reported": round(max(m["peak_memory_mb"] for m in metrics)),
        "wall_seconds": round(time.time() - started, 1),
        "reward_per_step": [round(m["reward"], 4) for m in metrics],
        "loss_per_step": [m["loss"] for m in metrics],
        "adapter": str(run_dir / "adapter"),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--config", default=str(ROOT / "examples" / "01-classroom-demo.yaml"))
    p.add_argument("--sharded", action="store_true",
                   help="the N processes shard the model (FSDP) rather than each hold it whole")
    p.add_argument("--precision", default=None,
                   help="model.precision for both runs (FSDP needs 16bit or 32bit)")
    args = p.parse_args()
    import psutil
    import torch
    from safetensors.torch import load_file

    gpu = torch.cuda.is_available()
    load_before = os.getloadavg()
    # sharded runs train with torch's AdamW (8-bit Adam cannot update slices): both runs then
    settings = ("train.optimizer=adamw",) if args.sharded else ()
    one = run(Path(args.config), 1, args.steps, "one", precision=args.precision,
              settings=settings)
    kind = "fsdp" if args.sharded else "n"
    many = run(Path(args.config), args.processes, args.steps, f"{kind}{args.processes}",
               sharded=args.sharded, precision=args.precision, settings=settings)
    a = load_file(Path(one.pop("adapter")) / "adapter_model.safetensors")
    b = load_file(Path(many.pop("adapter")) / "adapter_model.safetensors")
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    result = {
        "what": f"{Path(args.config).name}"
                f"{f' at {args.precision}' if args.precision else ''}, {args.steps} steps, same "
                f"global batch and seed, on 1 process and on {args.processes} (accelerate launch "
                f"{'--use_fsdp: sharded' if args.sharded else '--multi_gpu'})",
        "machine": {**machine(), "cpu_model": cpu_name(), "gpus": torch.cuda.device_count(),
                    "gpu": torch.cuda.get_device_name(0) if gpu else None},
        "load_average_before": [round(x, 2) for x in load_before],
        "one_process": one, f"{args.processes}_processes": many,
        "speedup": round(many["steps_per_hour"] / one["steps_per_hour"], 3),
        "scaling_efficiency": round(many["steps_per_hour"]
                                    / (args.processes * one["steps_per_hour"]), 3),
        "adapter_max_abs_difference": diff,
        "memory_total_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"scaling_{'gpu' if gpu else 'cpu'}{'_fsdp' if args.sharded else ''}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("speedup", "scaling_efficiency",
                                             "adapter_max_abs_difference")}))
    print(f"one process: {one['steps_per_hour']} steps/h, peak "
          f"{one['peak_rss_mb_per_process']} MB; {args.processes} processes: "
          f"{many['steps_per_hour']} steps/h, peak {many['peak_rss_mb_per_process']} MB")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
