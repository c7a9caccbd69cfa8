"""The trainer and the worker process on a tiny random model, through the real loader."""
import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.config import RunConfig
from core.events import read_events
from core.runs import RunManager, worker_command
from core.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent

METRIC_NAMES = ["reward", "reward_std", "frac_reward_zero_std", "loss", "grad_norm",
                "learning_rate", "completions/mean_length", "completions/clipped_ratio",
                "clip_ratio/region_mean", "entropy", "step_time", "tokens_per_second",
                "peak_memory_mb", "rewards/length_target/mean"]


def tiny_config(model_dir, **grpo) -> RunConfig:
    return RunConfig.from_dict({
        "name": "tiny",
        "model": {"source": str(model_dir), "precision": "32bit", "lora_r": 4, "lora_alpha": 8},
        "data": {"source": "builtin:arithmetic?n=50&seed=1"},
        "rewards": [{"template": "length_target", "params": {"unit": "characters", "target": 55,
                                                             "tolerance": 8}}],
        "grpo": {"num_generations": 4, "prompts_per_step": 2, "max_completion_length": 12,
                 **grpo},
        "train": {"max_steps": 2, "learning_rate": 1e-2, "save_steps": 0, "threads": 2,
                  "optimizer": "adamw"},
    })


def events_of(run_dir, kind):
    return [e for e in read_events(run_dir)[0] if e["type"] == kind]


@pytest.mark.parametrize("grpo", [
    {"loss_type": "grpo"},
    {"loss_type": "bnpo", "beta": 0.1},
    {"loss_type": "dr_grpo", "importance_sampling_level": "sequence"},
    {"loss_type": "dapo", "num_iterations": 2, "gradient_accumulation_steps": 2,
     "mask_truncated_completions": True, "epsilon_high": 0.28},
])
def test_steps_update_the_adapter_and_log_metrics(tiny_model_dir, tmp_path, grpo):
    trainer = Trainer(tiny_config(tiny_model_dir, **grpo), tmp_path).setup()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainer.train() == "finished"
    metrics = events_of(tmp_path, "metrics")
    assert [m["step"] for m in metrics] == [1, 2]
    for name in METRIC_NAMES:
        assert name in metrics[-1], name
    if grpo.get("beta"):
        assert metrics[-1]["kl"] >= 0
    changed = any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters()
                  if n in before)
    # with mask_truncated_completions every completion of an untrained tiny model is cut off,
    # so the loss is zero there; everywhere else the adapter must move
    assert changed or grpo.get("mask_truncated_completions")
    samples = events_of(tmp_path, "samples")
    assert samples and {"prompt", "completion", "rewards", "total"} <= set(samples[0]["items"][0])
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    # shareable: the base by a name that means something elsewhere, and a model card
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == Path(tiny_model_dir).name
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and "## Rewards" in card and "length_target" in card
    assert "reward.svg" in card and (tmp_path / "adapter" / "reward.svg").read_text().startswith("<svg")
    assert str(tiny_model_dir) not in card + (tmp_path / "adapter" / "aha_config.yaml").read_text()


def test_4bit_base_is_really_quantized(tiny_model_dir, tmp_path):
    import bitsandbytes as bnb

    cfg = tiny_config(tiny_model_dir)
    cfg.model.precision = "4bit"
    trainer = Trainer(cfg, tmp_path).setup()
    layers = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.dtype == torch.uint8 for m in layers)
    assert trainer.train(max_steps=1) == "finished"


def run_worker(run_dir, *extra, timeout=600):
    return subprocess.run(worker_command(Path(run_dir)) + list(extra), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_resume_continues_exactly(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir)
    cfg.model.precision = "4bit"
    cfg.train.optimizer = "adamw_8bit"
    cfg.train.max_steps = 4
    cfg.train.lr_scheduler = "cosine"
    straight, split = tmp_path / "straight", tmp_path / "split"
    for d in (straight, split):
        d.mkdir()
        cfg.save(d / "config.yaml")
    assert run_worker(straight).returncode == 0
    first = run_worker(split, "--max-steps", "2")
    assert first.returncode == 0, first.stderr
    assert (split / "checkpoints" / "step-2" / "optimizer.pt").exists()
    second = run_worker(split, "--resume")
    assert second.returncode == 0, second.stderr
    assert [e["step"] for e in events_of(split, "metrics")] == [1, 2, 3, 4]
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(split / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    rewards = lambda d: [e["reward"] for e in events_of(d, "metrics")]
    assert rewards(straight) == pytest.approx(rewards(split), abs=1e-6)


def test_stop_request_checkpoints_and_exits(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir)
    cfg.train.max_steps = 1000
    manager = RunManager(tmp_path / "runs")
    run_dir = manager.create(cfg)
    manager.start(run_dir)
    import time
    deadline = time.time() + 300
    while not events_of(run_dir, "metrics") and time.time() < deadline:
        time.sleep(0.5)
    assert manager.status(run_dir).state == "training"
    manager.stop(run_dir)
    assert manager.wait(run_dir, timeout=120) == 0
    status = manager.status(run_dir)
    assert status.state == "stopped" and not status.alive
    assert (run_dir / "checkpoints" / f"step-{status.step}").exists()
    assert [r.run_dir for r in manager.list()] == [run_dir]


def test_crash_writes_error_event(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir)
    cfg.data.source = str(tmp_path / "missing.csv")
    cfg.save(tmp_path / "config.yaml")
    result = run_worker(tmp_path)
    assert result.returncode == 1
    errors = events_of(tmp_path, "error")
    assert len(errors) == 1
    assert "missing.csv" in errors[0]["message"] and "\n" not in errors[0]["message"]
    assert "Traceback" in errors[0]["traceback"]
    assert "Traceback" not in result.stderr
    assert RunManager(tmp_path.parent).status(tmp_path).state == "failed"


def test_bad_config_is_one_line(tmp_path):
    (tmp_path / "config.yaml").write_text("grpo:\n  loss_type: magic\n")
    result = run_worker(tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: 'grpo.loss_type' must be one of grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, "
        "vespo; got 'magic'."]


LOSS_CASES = {"grpo": {}, "bnpo": {"beta": 0.1}, "dr_grpo": {}, "dapo": {"beta": 0.1},
              "cispo": {"epsilon_high": 1.001}, "sapo": {},
              # one ratio per answer: a clip range as tight as the others' would clip every one
              "luspo": {"importance_sampling_level": "sequence", "epsilon": 0.2}, "vespo": {}}


@pytest.mark.parametrize("loss_type", sorted(LOSS_CASES))
def test_passes_split_memory_not_the_loss(tiny_model_dir, tmp_path, loss_type):
    """Cutting a step into smaller forward/backward passes gives the same gradients and the same
    metrics. The second step reuses the first one's answers (num_iterations 2), so the policy has
    moved from the one that sampled them and a tight clip range clips some tokens."""
    grads, metrics = [], []
    for size in (8, 3, 1):  # 3 does not divide a chunk of 8: passes of 3, 3 and 2
        cfg = tiny_config(tiny_model_dir, loss_type=loss_type, gradient_accumulation_steps=1,
                          micro_batch_size=size, num_iterations=2,
                          **{"epsilon": 0.002, **LOSS_CASES[loss_type]})
        # a band the tiny model's 12-token answers (80 to 115 characters here) fall in and out
        # of, so that the rewards have a spread and the gradients are not zero
        cfg.rewards[0].params.update(target=90, tolerance=8)
        trainer = Trainer(cfg, tmp_path / f"{loss_type}-{size}").setup()
        trainer.step()
        metrics.append(trainer.step())
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters()
                      if p.requires_grad})
    assert any(g.abs().sum() > 0 for g in grads[0].values())
    for other in grads[1:]:
        for name, g in grads[0].items():
            assert torch.allclose(g, other[name], rtol=1e-3, atol=1e-6), name
    loss_keys = [k for k in metrics[0] if k.startswith(("clip_ratio/", "kl", "cispo", "vespo"))]
    assert loss_keys or loss_type == "sapo"
    if loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"):
        assert metrics[0]["clip_ratio/region_mean"] > 0  # the comparison is not of zeros
    for other in metrics[1:]:
        for k in loss_keys + ["entropy", "reward"]:
            assert other[k] == pytest.approx(metrics[0][k], rel=1e-3, abs=1e-6), k


def test_colocated_vllm_needs_vllm_in_the_training_python(tiny_model_dir, tmp_path):
    """generation.vllm_mode colocate in a Python without vLLM: one line that says what to do."""
    from core.engine_choice import vllm_importable
    from core.vllm_engine import VLLMError
    if vllm_importable():
        pytest.skip("this Python has vLLM")
    cfg = tiny_config(tiny_model_dir)
    cfg.generation.engine, cfg.generation.vllm_mode = "vllm", "colocate"
    with pytest.raises(VLLMError) as err:
        Trainer(cfg, tmp_path).setup()
    assert "this Python has no vLLM" in str(err.value) and ".venv-vllm/bin/python" in str(err.value)
    assert "\n" not in str(err.value)
