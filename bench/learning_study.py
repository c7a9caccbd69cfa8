"""Which settings keep the classroom demo learning? A small, bounded sweep on this CPU.

Each setting is the classroom demo (`examples/01-classroom-demo.yaml`) with a few overrides,
trained by the real worker (`python -m core train`) for 40 steps (100 for the settings marked
long) under 3 seeds, then scored on the held-out questions by `python -m core eval` (greedy, base
against the adapter at step 40 and, for long runs, step 100). Per setting the table gives, as
means over seeds with the spread: correctness over the first and the last 8 steps, total reward
at step 8 and 40, held-out accuracy before and after, final entropy, the share of zero-spread
steps and the collapse warnings raised.

    python bench/learning_study.py [--jobs 2] [--settings a,b] [--seeds 42,43,44]
    python bench/learning_study.py --summarize-only      # table and chart from finished runs

Runs land in bench/results/learning_runs/ (ignored by git) and are reused when they finished,
so the sweep can be stopped and continued. Results: bench/results/learning_study.json and .md,
and a chart of the shipped demo's curves, bench/results/learning_demo.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from studio.presets import QUALITY_LEVELS  # noqa: E402

DEMO = ROOT / "examples" / "01-classroom-demo.yaml"
RESULTS = ROOT / "bench" / "results"
RUNS = RESULTS / "learning_runs"
SEEDS = (42, 43, 44)
STEPS, LONG_STEPS, WINDOW = 40, 100, 8
HELDOUT_QUESTIONS = 30

# The settings before this study, as the demo shipped: every other setting is this plus overrides.
SHIPPED = {"train.learning_rate": 1e-3, "grpo.temperature": 0.7, "grpo.beta": 0.0,
           "rewards": [{"template": "numeric_match", "weight": 1.0,
                        "params": {"partial_credit_for_number": 0.1}},
                       {"template": "length_target", "weight": 0.5,
                        "params": {"unit": "words", "target": 3, "tolerance": 3}}],
           "grpo.num_generations": 6, "grpo.prompts_per_step": 4}


def _rewards(partial: float, length_weight: float) -> list[dict]:
    return [{"template": "numeric_match", "weight": 1.0,
             "params": {"partial_credit_for_number": partial}},
            {"template": "length_target", "weight": length_weight,
             "params": {"unit": "words", "target": 3, "tolerance": 3}}]


# name -> (what it tests, overrides on top of SHIPPED, long run)
SETTINGS = {
    "shipped": ("the demo as shipped: lr 1e-3, temperature 0.7", {}, False),
    "lr2e-4_t1.0": ("lower learning rate, higher temperature",
                    {"train.learning_rate": 2e-4, "grpo.temperature": 1.0}, True),
    "lr2e-4_t0.7": ("lower learning rate alone",
                    {"train.learning_rate": 2e-4}, False),
    "lr1e-3_t1.0": ("higher temperature alone",
                    {"grpo.temperature": 1.0}, False),
    "lr5e-4_t1.0": ("a middle learning rate at temperature 1.0",
                    {"train.learning_rate": 5e-4, "grpo.temperature": 1.0}, False),
    "lr2e-4_t1.0_beta0.04": ("a KL anchor to the base model",
                             {"train.learning_rate": 2e-4, "grpo.temperature": 1.0,
                              "grpo.beta": 0.04}, False),
    "lr2e-4_t1.0_nopartial": ("no credit for a wrong number, a lighter length reward",
                              {"train.learning_rate": 2e-4, "grpo.temperature": 1.0,
                               "rewards": _rewards(0.0, 0.2)}, False),
    "lr2e-4_t1.0_g8": ("8 answers per question, 3 questions a step (the same 24 answers)",
                       {"train.learning_rate": 2e-4, "grpo.temperature": 1.0,
                        "grpo.num_generations": 8, "grpo.prompts_per_step": 3}, False),
}
# The studio's quality/speed slider on the shipped demo: what a beginner gets at each level.
SHIPPED_NOW = {"train.learning_rate": 2e-4, "grpo.temperature": 1.0}
for _level in (1, 2, 3, 4, 5):
    SETTINGS[f"quality{_level}"] = (
        f"the studio's quality/speed slider at {_level}: "
        + ", ".join(f"{k.split('.')[-1]} {v}" for k, v in QUALITY_LEVELS[_level].items()),
        {**SHIPPED_NOW, **QUALITY_LEVELS[_level]}, True)

# Level 1 as it was before the 100-step sweep: 1 question a step (one seed of 3 collapsed).
SETTINGS["quality1_1q"] = ("the slider's level 1 as it was: 4 answers to 1 question a step, "
                           "32 tokens", {**SHIPPED_NOW, "grpo.num_generations": 4,
                                         "grpo.prompts_per_step": 1,
                                         "grpo.max_completion_length": 32}, True)


# Settings on another example than the classroom demo: name -> its config (run as shipped,
# plus the overrides; the demo's SHIPPED values are not applied to them).
EXAMPLE02 = ROOT / "examples" / "02-word-problems-reasoning.yaml"
CONFIGS = {"example02": EXAMPLE02, "example02_t0.8": EXAMPLE02, "example02_tags": EXAMPLE02}
SETTINGS["example02"] = ("examples/02-word-problems-reasoning.yaml as shipped (working in a "
                         "sentence, then 'The answer is N'; 4 questions x 6 answers of up to "
                         "64 tokens)", {}, True)
SETTINGS["example02_t0.8"] = ("the second example at temperature 0.8",
                              {"grpo.temperature": 0.8}, False)
SETTINGS["example02_tags"] = (
    "the second example as it shipped before: think/answer tags, 2 questions x 6 answers of up "
    "to 96 tokens",
    {"data.system_prompt": "Think step by step inside <think> </think>, then give only the final "
                           "number inside <answer> </answer>.",
     "rewards": [{"template": "numeric_match", "weight": 1.0,
                  "params": {"partial_credit_for_number": 0.1}},
                 {"template": "tag_partial_credit", "weight": 0.5},
                 {"template": "reasoning_length", "weight": 0.2,
                  "params": {"min_words": 5, "max_words": 60}}],
     "grpo.prompts_per_step": 2, "grpo.max_completion_length": 96}, False)


def config_of(setting: str) -> Path:
    return CONFIGS.get(setting, DEMO)


def base_values(setting: str) -> dict:
    """What a setting's runs train with besides the run-length settings: the demo's old
    settings plus the overrides, or another example's file plus the overrides."""
    if setting in CONFIGS:
        import yaml
        rewards = yaml.safe_load(config_of(setting).read_text())["rewards"]
        return {"rewards": rewards, **SETTINGS[setting][1]}
    return {**SHIPPED, **SETTINGS[setting][1]}


def overrides(setting: str, seed: int) -> list[str]:
    values = {**(SETTINGS[setting][1] if setting in CONFIGS else base_values(setting)),
              "train.seed": seed, "train.save_steps": 20,
              "train.eval_steps": 0, "data.eval_share": 0.3, "train.stop_on_collapse": 0,
              "train.keep_checkpoints": 0}
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def run_dir(setting: str, seed: int) -> Path:
    return RUNS / setting / f"seed{seed}"


def _finished(path: Path, steps: int) -> bool:
    from core.events import read_events
    events, _ = read_events(path)
    return any(e["type"] == "status" and e.get("state") == "finished" and e.get("step") == steps
               for e in events)


def train_and_eval(setting: str, seed: int, threads: int) -> str:
    """One run: train (skipped when already finished) and evaluate each checkpoint scored."""
    steps = LONG_STEPS if SETTINGS[setting][2] else STEPS
    path = run_dir(setting, seed)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    if not _finished(path, steps):
        # An interrupted run continues from its last checkpoint (its random state included).
        resume = any((path / "checkpoints").glob("step-*"))
        if path.exists() and not resume:
            import shutil
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "core", "train", str(config_of(setting)), "--run-dir",
               str(path),
               "--max-steps", str(steps), "--set", f"train.threads={threads}"]
        if resume:
            cmd.append("--resume")
        for o in overrides(setting, seed):
            cmd += ["--set", o]
        with open(path / "worker.log", "a" if resume else "w") as log:
            if subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode:
                return f"{setting}/{seed}: training failed, see {path / 'worker.log'}"
    for at in sorted({STEPS, steps}):
        out = path / f"eval-step-{at}.json"
        if out.exists():
            continue
        cmd = [sys.executable, "-m", "core", "eval", str(path), "--checkpoint", f"step-{at}",
               "--max-questions", str(HELDOUT_QUESTIONS), "--threads", str(threads)]
        with open(path / "eval.log", "a") as log:
            if subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode:
                return f"{setting}/{seed}: evaluation failed, see {path / 'eval.log'}"
        (path / "eval.json").rename(out)
    return f"{setting}/{seed}: done"


def _unscored(setting: str, seed: int) -> bool:
    """A run whose folder is here but whose held-out evaluation is missing (it failed)."""
    path = run_dir(setting, seed)
    steps = LONG_STEPS if SETTINGS[setting][2] else STEPS
    return path.exists() and not all((path / f"eval-step-{at}.json").exists()
                                     for at in {STEPS, steps})


# ---- summary ---------------------------------------------------------------------------------
def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def run_summary(setting: str, seed: int) -> dict | None:
    from core.events import read_events
    from core.health import CollapseDetector

    path = run_dir(setting, seed)
    events, _ = read_events(path)
    by_step = {}  # a step trained again after a resume replaces the first try
    for e in events:
        if e["type"] == "metrics":
            by_step[e["step"]] = e
    metrics = [by_step[k] for k in sorted(by_step)]
    if not metrics:
        return None
    ready = next(e for e in events if e["type"] == "status" and e.get("state") == "ready")
    names = ready["rewards"]
    correct = names[0]  # numeric_match: the correctness term in every setting here
    best = next((r["params"].get("correct_score", 1.0) for r in
                 base_values(setting)["rewards"] if r["template"] == correct),
                1.0)
    detector = CollapseDetector({correct: best}, names)
    warnings = []
    for m in metrics:
        warnings += [w.to_event() for w in detector.update(m["step"], m)]
    curve = [{"step": m["step"], "reward": m["reward"], "entropy": m["entropy"],
              "zero_spread": m["frac_reward_zero_std"],
              **{n: m.get(f"rewards/{n}/mean") for n in names}} for m in metrics]

    def window(upto: int, key: str, first: bool) -> float | None:
        part = [c[key] for c in curve if c["step"] <= upto]
        part = part[:WINDOW] if first else part[-WINDOW:]
        return _mean(part)

    out = {"setting": setting, "seed": seed, "steps": len(curve), "curve": curve,
           "warnings": warnings}
    for at in (STEPS, LONG_STEPS):
        if len(curve) < at:
            continue
        ev = path / f"eval-step-{at}.json"
        heldout = json.loads(ev.read_text()) if ev.exists() else None
        out[f"at{at}"] = {
            "correct_first8": window(at, correct, True),
            "correct_last8": window(at, correct, False),
            "reward_step8": curve[min(WINDOW, at) - 1]["reward"],
            f"reward_step{at}": curve[at - 1]["reward"],
            "reward_last8": window(at, "reward", False),
            "entropy_last8": window(at, "entropy", False),
            "zero_spread_share": _mean([1.0 if c["zero_spread"] >= 1.0 else 0.0
                                        for c in curve[:at]]),
            "heldout_before": heldout["greedy"]["base"].get("accuracy") if heldout else None,
            "heldout_after": heldout["greedy"]["trained"].get("accuracy") if heldout else None,
            "warnings": sorted({w["code"] for w in warnings if w["step"] <= at}),
        }
    return out


def stored_runs() -> dict:
    """The run summaries an earlier sweep wrote (learning_study.json), by (setting, seed): the
    runs' folders are not kept, so a sweep continued on another checkout keeps what it had."""
    try:
        earlier = json.loads((RESULTS / "learning_study.json").read_text())
    except (OSError, ValueError):
        return {}
    return {(r["setting"], r["seed"]): r for runs in earlier.get("runs", {}).values()
            for r in runs}


def summarize(settings: list[str], seeds: list[int]) -> dict:
    table = []
    runs = {}
    stored = stored_runs()
    for s in settings:
        per_seed = []
        for seed in seeds:
            found, earlier = run_summary(s, seed), stored.get((s, seed))
            if earlier and (not found or earlier["steps"] > found["steps"]):
                found = earlier
            if found:
                per_seed.append(found)
        runs[s] = per_seed
        for at in (STEPS, LONG_STEPS):
            done = [r[f"at{at}"] for r in per_seed if f"at{at}" in r]
            if not done:
                continue
            row = {"setting": s, "what": SETTINGS[s][0], "steps": at, "seeds": len(done)}
            for key in done[0]:
                if key == "warnings":
                    row["runs_with_warnings"] = sum(1 for d in done if d["warnings"])
                    row["warning_codes"] = sorted({c for d in done for c in d["warnings"]})
                    continue
                values = [d[key] for d in done if d[key] is not None]
                row[key] = _mean(values)
                row[key + "_min"] = min(values) if values else None
                row[key + "_max"] = max(values) if values else None
            table.append(row)
    return {"table": table, "runs": runs}


def _fmt(row: dict, key: str, pct: bool = False) -> str:
    v, lo, hi = row.get(key), row.get(key + "_min"), row.get(key + "_max")
    if v is None:
        return "-"
    f = (lambda x: f"{x:.0%}") if pct else (lambda x: f"{x:.2f}")
    return f"{f(v)} ({f(lo)}–{f(hi)})" if lo is not None and hi is not None and hi > lo else f(v)


def markdown(result: dict) -> str:
    head = ("| setting | steps | correct, first 8 | correct, last 8 | reward @8 | reward @end | "
            "held-out before | held-out after | entropy, last 8 | zero-spread steps | "
            "runs warned |")
    lines = [head, "|" + "---|" * 11]
    for row in result["table"]:
        at = row["steps"]
        lines.append(
            f"| {row['setting']} | {at} | {_fmt(row, 'correct_first8')} | "
            f"{_fmt(row, 'correct_last8')} | {_fmt(row, 'reward_step8')} | "
            f"{_fmt(row, f'reward_step{at}')} | {_fmt(row, 'heldout_before', True)} | "
            f"{_fmt(row, 'heldout_after', True)} | {_fmt(row, 'entropy_last8')} | "
            f"{_fmt(row, 'zero_spread_share', True)} | {row['runs_with_warnings']}/{row['seeds']} "
            f"{' '.join(row['warning_codes'])} |")
    return "\n".join(lines) + "\n"


def chart(result: dict, setting: str, out: Path) -> Path | None:
    """Reward per template, entropy and zero-spread share of one setting's seeds, as a PNG
    rendered from plotly in the system Chromium (the browser the UI tests use)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    runs = result["runs"].get(setting) or []
    if not runs:
        return None
    names = [k for k in runs[0]["curve"][0] if k not in ("step", "reward", "entropy",
                                                          "zero_spread")]
    fig = make_subplots(rows=1, cols=3, subplot_titles=(
        "reward per template", "entropy (nats per token)", "groups with zero spread"))
    colors = ["#2563eb", "#16a34a", "#dc2626", "#9333ea"]
    for i, run in enumerate(runs):
        steps = [c["step"] for c in run["curve"]]
        for j, key in enumerate(names + ["reward"]):
            fig.add_trace(go.Scatter(x=steps, y=[c[key] for c in run["curve"]], mode="lines",
                                     line={"color": colors[j % len(colors)], "width": 1.5},
                                     name=f"{key}", legendgroup=key, showlegend=i == 0,
                                     opacity=0.85), row=1, col=1)
        fig.add_trace(go.Scatter(x=steps, y=[c["entropy"] for c in run["curve"]], mode="lines",
                                 line={"color": "#444", "width": 1.5}, showlegend=False),
                      row=1, col=2)
        fig.add_trace(go.Scatter(x=steps, y=[c["zero_spread"] for c in run["curve"]],
                                 mode="lines", line={"color": "#f59e0b", "width": 1.5},
                                 showlegend=False), row=1, col=3)
    fig.update_layout(width=1200, height=380, margin={"l": 40, "r": 20, "t": 50, "b": 40},
                      title=f"classroom demo, setting '{setting}', seeds "
                            f"{', '.join(str(r['seed']) for r in runs)}",
                      template="plotly_white", legend={"orientation": "h", "y": -0.15})
    html = out.with_suffix(".html")
    fig.write_html(html, include_plotlyjs=True, full_html=True)
    try:
        from playwright.sync_api import sync_playwright
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1200, "height": 380})
            page.goto(html.as_uri())
            page.wait_for_selector(".main-svg")
            page.screenshot(path=str(out))
            browser.close()
    except Exception as exc:  # no Chromium here: the HTML chart stays
        print(f"chart: no PNG ({type(exc).__name__}: {exc}); see {html}")
        return None
    finally:
        html.unlink(missing_ok=True)
    return out


def machine() -> dict:
    import psutil
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    p.add_argument("--jobs", type=int, default=2, help="runs at once (each gets cores / jobs "
                   "threads)")
    p.add_argument("--summarize-only", action="store_true")
    p.add_argument("--chart", default="lr2e-4_t1.0", help="the setting charted as the demo")
    args = p.parse_args()
    settings = [s for s in args.settings.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        p.error(f"unknown settings: {', '.join(sorted(unknown))}")

    started = time.time()
    if not args.summarize_only:
        threads = max(1, (os.cpu_count() or 2) // args.jobs)
        # seed by seed: stopped early, every setting has as many seeds as the others (or one less)
        stored = stored_runs()  # finished in an earlier sweep whose folders are gone
        jobs = [(s, seed) for seed in seeds for s in settings
                if stored.get((s, seed), {}).get("steps", 0)
                < (LONG_STEPS if SETTINGS[s][2] else STEPS) or _unscored(s, seed)]
        with ThreadPoolExecutor(args.jobs) as pool:
            for line in pool.map(lambda job: train_and_eval(*job, threads), jobs):
                print(line, flush=True)

    result = summarize(list(SETTINGS), sorted(set(seeds) | set(SEEDS)))
    result.update({"date": time.strftime("%Y-%m-%d"), "machine": machine(),
                   "config": str(DEMO.relative_to(ROOT)), "shipped": SHIPPED,
                   "settings": {k: {"what": v[0], "overrides": v[1], "long": v[2]}
                                for k, v in SETTINGS.items()},
                   "seeds": seeds, "heldout_questions": HELDOUT_QUESTIONS,
                   "window": WINDOW, "wall_s": round(time.time() - started)})
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "learning_study.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "learning_study.md").write_text(markdown(result))
    print(markdown(result))
    for setting, name in ((args.chart, "learning_demo.png"), ("shipped", "learning_shipped.png")):
        if chart(result, setting, RESULTS / name):
            print(f"chart: {RESULTS / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
