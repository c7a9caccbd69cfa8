"""GRPO on the real embedded model keeps learning, and a run that collapses is noticed.

The classroom demo exactly as shipped, for a few steps, as real worker processes on fixed seeds
(two at once, one thread each; a run alone takes both): the correctness reward of the last
steps beats that of the first steps, and the held-out questions (never trained on, answered
greedily) go from the base model's score to a higher one. Then the same demo with a learning
rate known to collapse
(bench/learning_study.py): the collapse detector raises its warning and, with
train.stop_on_collapse, the run stops and keeps the adapter from before the collapse.
"""
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from core.config import RunConfig
from core.events import read_events
from core.runs import RunManager

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "01-classroom-demo.yaml"
STEPS, WINDOW = 14, 4
SEEDS = (42, 43)
pytestmark = pytest.mark.model


def run_demo(tmp_path, seeds, **overrides):
    """Train the demo once per seed, all at once; returns the run folders."""
    manager = RunManager(tmp_path, max_workers=len(seeds))
    runs = []
    for seed in seeds:
        cfg = RunConfig.load(DEMO)
        cfg.name = f"seed-{seed}"
        # the two cores shared among the runs (one each for two; both for one)
        cfg.train.seed, cfg.train.threads = seed, max(1, 2 // len(seeds))
        for path, value in overrides.items():
            section, key = path.split("__")
            setattr(getattr(cfg, section), key, value)
        run_dir = manager.create(cfg)
        manager.submit(run_dir)
        runs.append(run_dir)
    for run_dir in runs:
        assert manager.wait(run_dir, timeout=1500) == 0, \
            (run_dir / "worker.log").read_text()[-3000:]
    return runs


def of(run_dir, kind):
    return [e for e in read_events(run_dir)[0] if e["type"] == kind]


def test_the_demo_learns_from_start_to_end_on_fixed_seeds(tmp_path):
    runs = run_demo(tmp_path, SEEDS, train__max_steps=STEPS, train__eval_steps=STEPS,
                    train__save_steps=0)
    for run_dir in runs:
        metrics = of(run_dir, "metrics")
        correct = [m["rewards/numeric_match/mean"] for m in metrics]
        assert len(correct) == STEPS
        first, last = sum(correct[:WINDOW]) / WINDOW, sum(correct[-WINDOW:]) / WINDOW
        evals = of(run_dir, "eval")
        assert [e["step"] for e in evals] == [0, STEPS] and evals[0]["questions"] == 30
        before, after = evals[0]["accuracy"], evals[-1]["accuracy"]
        print(f"{run_dir.name}: correctness {[round(c, 2) for c in correct]}; held-out "
              f"accuracy {before:.2f} -> {after:.2f}")
        assert last > first + 0.2, correct
        assert after > before + 0.1, (before, after)
        serious = [w for w in of(run_dir, "warning") if w["code"] != "risky_setting"]
        assert not serious, serious
        assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
        config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert "held-out questions" in (run_dir / "adapter" / "README.md").read_text()


def test_a_collapsing_run_is_noticed_and_stopped_at_its_last_good_checkpoint(tmp_path):
    # ten times the stable learning rate at the old temperature: the reward rises, then the
    # answers collapse onto one short reply
    (run_dir,) = run_demo(tmp_path, (44,), train__learning_rate=2e-3, grpo__temperature=0.7,
                          train__max_steps=30, train__save_steps=2, train__stop_on_collapse=3,
                          train__keep_checkpoints=2)
    warnings = of(run_dir, "warning")
    codes = {w["code"] for w in warnings}
    assert {"risky_setting"} < codes, codes  # the settings advice, and at least one collapse
    assert codes & {"entropy_collapse", "no_signal", "correctness_falling", "reward_hacking"}
    assert all(w["message"] and w["fix"] and "\n" not in w["message"] for w in warnings)
    final = [e for e in of(run_dir, "status") if e.get("state") == "stopped"][-1]
    began = final["collapsed_at"]
    assert "collapsed" in final["message"]
    steps = [m["step"] for m in of(run_dir, "metrics")]
    assert steps[-1] < 30 and steps[-1] >= began + 2  # stopped after 3 steps of collapse
    kept = [p for p in (run_dir / "checkpoints").glob("step-*")]
    good = [p for p in kept if int(p.name.split("-")[1]) < began]
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    if good:  # the adapter is the newest checkpoint from before the collapse, kept by pruning
        newest_good = max(good, key=lambda p: int(p.name.split("-")[1]))
        same = load_file(newest_good / "adapter_model.safetensors")
        assert adapter.keys() == same.keys()
        assert all((adapter[k] == same[k]).all() for k in adapter)
