"""GRPO on the real embedded model learns: the reward of the last steps beats the untrained one.

Runs the classroom demo's settings for a few steps as a real worker process. Seeds are fixed, so
on one machine the run is deterministic; the margin leaves room for other CPUs' rounding.
"""
from pathlib import Path

import pytest

from core.config import RunConfig
from core.events import read_events
from core.runs import RunManager

ROOT = Path(__file__).resolve().parent.parent
STEPS = 10


@pytest.mark.model
def test_reward_rises_on_embedded_model(tmp_path):
    cfg = RunConfig.load(ROOT / "examples" / "01-classroom-demo.yaml")
    cfg.train.max_steps = STEPS
    cfg.train.save_steps = 0
    manager = RunManager(tmp_path)
    run_dir = manager.create(cfg)
    manager.start(run_dir)
    assert manager.wait(run_dir, timeout=900) == 0, (run_dir / "worker.log").read_text()[-3000:]

    events, _ = read_events(run_dir)
    rewards = [e["reward"] for e in events if e["type"] == "metrics"]
    assert len(rewards) == STEPS
    # Step 1 scores completions of the untrained model (they are sampled before its update);
    # on this task the reward can jump within a step or two, so later steps are no baseline.
    before = rewards[0]
    last, second_half = sum(rewards[-3:]) / 3, sum(rewards[STEPS // 2:]) / (STEPS - STEPS // 2)
    print(f"reward by step: {[round(r, 2) for r in rewards]}")
    assert last > before + 0.25 and second_half > before + 0.25, rewards
    assert manager.status(run_dir).state == "finished"
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
