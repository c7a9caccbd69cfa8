"""Did the classroom demo learn? Its 40 steps as shipped, under 3 seeds, scored before and after.

Each seed trains `examples/01-classroom-demo.yaml` exactly as shipped (the real worker,
`python -m core train`; the config evaluates the held-out questions every 10 steps), then
`python -m core eval` scores the base model and the final adapter on the held-out questions
(greedy; never trained on) with the run's own rewards. Written per seed and as means: held-out
accuracy and reward per template before and after, the in-training held-out curve, correctness
over the first and the last 8 steps, the final entropy, the share of steps with no reward spread,
the collapse warnings, and a few questions whose answer changed.

    python bench/demo_before_after.py [--seeds 42,43,44] [--threads 1]

Runs land in bench/results/demo_runs/ (ignored by git); a finished run is not trained again.
Result: bench/results/demo_before_after_cpu.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.learning_study import WINDOW, _finished, machine  # noqa: E402

DEMO = ROOT / "examples" / "01-classroom-demo.yaml"
RESULTS = ROOT / "bench" / "results"
RUNS = RESULTS / "demo_runs"


def train_and_eval(seed: int, threads: int, steps: int) -> Path:
    path = RUNS / f"seed{seed}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    if not _finished(path, steps):
        resume = any((path / "checkpoints").glob("step-*"))
        path.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "core", "train", str(DEMO), "--run-dir", str(path),
               "--max-steps", str(steps), "--set", f"train.seed={seed}",
               "--set", f"train.threads={threads}"] + (["--resume"] if resume else [])
        with open(path / "worker.log", "a") as log:
            subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                           check=True)
    if not (path / "eval.json").exists():
        with open(path / "eval.log", "a") as log:
            subprocess.run([sys.executable, "-m", "core", "eval", str(path), "--threads",
                            str(threads)], cwd=ROOT, env=env, stdout=log,
                           stderr=subprocess.STDOUT, check=True)
    return path


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.fmean(xs), 4) if xs else None


def summary(path: Path, seed: int) -> dict:
    from core.events import read_events

    events, _ = read_events(path)

    def first_per_step(kind: str) -> list[dict]:
        # a step done again after a resume replays the same state (the checkpoint holds the RNG)
        seen = {}
        for e in events:
            if e["type"] == kind:
                seen.setdefault(e["step"], e)
        return [seen[k] for k in sorted(seen)]

    metrics, evals = first_per_step("metrics"), first_per_step("eval")
    result = json.loads((path / "eval.json").read_text())
    correct = result["correctness"][0]
    base, trained = result["greedy"]["base"], result["greedy"]["trained"]
    changed = [i for i in result["items"] if i["changed"]]
    return {
        "seed": seed, "steps": len(metrics),
        "heldout_questions": result["questions"],
        "accuracy": {"base": base.get("accuracy"), "trained": trained.get("accuracy")},
        "total": {"base": base["total"], "trained": trained["total"]},
        "rewards": {name: {"base": base["rewards"][name], "trained": trained["rewards"][name]}
                    for name in result["rewards"]},
        "heldout_curve": [{"step": e["step"], "accuracy": e.get("accuracy"),
                           "total": e.get("total")} for e in evals],
        "correct_first8": _mean(m.get(f"rewards/{correct}/mean") for m in metrics[:WINDOW]),
        "correct_last8": _mean(m.get(f"rewards/{correct}/mean") for m in metrics[-WINDOW:]),
        "entropy_last8": _mean(m.get("entropy") for m in metrics[-WINDOW:]),
        "zero_spread_share": _mean(1.0 if m.get("frac_reward_zero_std", 0) >= 1.0 else 0.0
                                   for m in metrics),
        "warnings": sorted({e.get("code") for e in events if e["type"] == "warning"}),
        "step_time_s": _mean(m.get("step_time") for m in metrics),
        "answers_changed": len(changed),
        "changed_examples": [{"question": i["question"], "answer": i["answer"],
                              "base": i["base"]["completion"][:80],
                              "trained": i["trained"]["completion"][:80]}
                             for i in changed[:5]],
    }


def markdown(result: dict) -> str:
    rows = ["| seed | held-out accuracy, base → trained | total reward, base → trained | "
            "correct, first 8 → last 8 steps | entropy, last 8 | zero-spread steps | warnings |",
            "|---|---|---|---|---|---|---|"]

    def pct(x):
        return "-" if x is None else f"{100 * x:.0f}%"

    for r in result["runs"] + [dict(result["mean"], seed="mean")]:
        rows.append(f"| {r['seed']} | {pct(r['accuracy']['base'])} → "
                    f"{pct(r['accuracy']['trained'])} | {r['total']['base']:.2f} → "
                    f"{r['total']['trained']:.2f} | {r['correct_first8']:.2f} → "
                    f"{r['correct_last8']:.2f} | {r['entropy_last8']:.3f} | "
                    f"{pct(r['zero_spread_share'])} | {', '.join(r.get('warnings', [])) or '-'} |")
    return "\n".join(rows) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="42,43,44")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    started = time.time()
    runs = []
    for seed in seeds:
        path = train_and_eval(seed, args.threads, args.steps)
        runs.append(summary(path, seed))
        print(f"seed {seed}: held-out accuracy {runs[-1]['accuracy']}", flush=True)
    mean = {key: _mean(r[key] for r in runs) for key in
            ("correct_first8", "correct_last8", "entropy_last8", "zero_spread_share",
             "step_time_s")}
    for key in ("accuracy", "total"):
        mean[key] = {side: _mean(r[key][side] for r in runs) for side in ("base", "trained")}
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "config": str(DEMO.relative_to(ROOT)), "steps": args.steps,
              "threads": args.threads, "runs": runs, "mean": mean,
              "wall_s": round(time.time() - started)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "demo_before_after_cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "demo_before_after_cpu.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
