"""`python -m core eval` and evaluation during training, on a tiny model through the real loader."""
import json
import subprocess
import sys
from pathlib import Path

from core.events import read_events
from core.trainer import Trainer
from tests.test_trainer import tiny_config

ROOT = Path(__file__).resolve().parent.parent


def test_eval_scores_base_and_trained_on_heldout_questions(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir)
    cfg.data.eval_share = 0.2
    cfg.train.eval_steps = 1
    cfg.train.eval_max_questions = 4
    cfg.rewards[0].template = "numeric_match"
    cfg.rewards[0].params = {"partial_credit_for_number": 0.1}
    trainer = Trainer(cfg, tmp_path).setup()
    assert trainer.train() == "finished"
    events = read_events(tmp_path)[0]
    held = set(trainer.heldout["question"][:])
    trained_on = {i["prompt"] for e in events if e["type"] == "samples" for i in e["items"]}
    assert held and trained_on and not held & trained_on
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [0, 1, 2]  # the untrained model first
    assert all(e["questions"] == 4 and 0 <= e["accuracy"] <= 1 for e in evals)
    # evaluating leaves training's random state alone: the same run without it trains the same
    plain = tiny_config(tiny_model_dir)
    plain.data.eval_share, plain.rewards = 0.2, cfg.rewards
    Trainer(plain, tmp_path / "plain").setup().train()
    rewards = lambda d: [e["reward"] for e in read_events(d)[0] if e["type"] == "metrics"]
    assert rewards(tmp_path) == rewards(tmp_path / "plain")

    done = subprocess.run([sys.executable, "-m", "core", "eval", str(tmp_path), "--samples", "2",
                           "--max-questions", "3"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert "greedy accuracy" in done.stdout and "eval.json" in done.stdout
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["checkpoint"] == "final" and result["questions"] == 3
    assert result["correctness"] == ["numeric_match"]
    for mode in ("greedy", "sampled"):
        for side in ("base", "trained"):
            summary = result[mode][side]
            assert set(summary) == {"total", "rewards", "accuracy"}
    assert {i["question"] for i in result["items"]} <= held
    assert all({"base", "trained", "changed"} <= set(i) for i in result["items"])
    # base at step 0 during training and base here are the same greedy answers, same scores
    assert result["greedy"]["base"]["rewards"]["numeric_match"] is not None


def test_eval_errors_are_one_line(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir)
    cfg.save(tmp_path / "config.yaml")
    for args, words in ((["--checkpoint", "step-9"], "No checkpoint 'step-9'"),
                        ([], "no trained adapter yet"),
                        (["--checkpoint", "../../etc"], "No checkpoint 'etc'")):
        done = subprocess.run([sys.executable, "-m", "core", "eval", str(tmp_path), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 1
        assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
