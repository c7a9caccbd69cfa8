"""One GRPO run on two CPU processes (accelerate launch, gloo) against the same run on one.

Real parts throughout: the real loader on a tiny random Llama, `accelerate launch` starting real
worker processes that meet over loopback, DistributedDataParallel averaging the gradients, or
(`--use_fsdp`) torch's FSDP2 holding half of every weight on each process.
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from core.events import read_events
from core.runs import launch_prefix

ROOT = Path(__file__).resolve().parent.parent

# What "the same" means between one process and two: the same completions (sampling is keyed
# by the global completion index), so rewards and token counts are equal; the log-probs differ
# only by float rounding (other batch shapes and padding), so losses, gradient norms and the
# adapter agree to these tolerances.
REL_TOL = 1e-4
ADAPTER_ATOL = 1e-4
# A process that dies is noticed when its connection closes; the others end within this.
DEATH_NOTICED_S = 60


def write_config(model_dir, path: Path, max_steps=2, save_steps=1, precision="32bit",
                 **sections) -> Path:
    """The tiny run; `sections`: settings added to its data, grpo or train section."""
    config = {
        "name": "tiny",
        "model": {"source": str(model_dir), "precision": precision, "lora_r": 4,
                  "lora_alpha": 8},
        "data": {"source": "builtin:arithmetic?n=50&seed=1"},
        "rewards": [{"template": "length_target",
                     "params": {"unit": "characters", "target": 55, "tolerance": 8}}],
        # the default loss (dapo: over the step's tokens), 4 prompts: 2 per process
        "grpo": {"num_generations": 4, "prompts_per_step": 4, "max_completion_length": 12},
        "train": {"max_steps": max_steps, "learning_rate": 1e-2, "save_steps": save_steps,
                  "keep_checkpoints": 0, "optimizer": "adamw"},
    }
    for name, values in sections.items():
        config[name].update(values)
    path.write_text(yaml.safe_dump(config))
    return path


def train_command(config: Path, run_dir: Path, processes: int | str, *extra) -> list[str]:
    """processes: a count (data parallel), or "fsdp" (two processes, sharded)."""
    prefix = launch_prefix(2, sharded=True) if processes == "fsdp" else launch_prefix(processes)
    return prefix + ["core", "train", str(config), "--run-dir", str(run_dir), *extra]


def train(config: Path, run_dir: Path, processes: int | str, *extra) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    result = subprocess.run(train_command(config, run_dir, processes, *extra), cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def events_of(run_dir, kind):
    return [e for e in read_events(run_dir)[0] if e["type"] == kind]


def adapter(path: Path) -> dict:
    return load_file(path / "adapter_model.safetensors")


def assert_same_adapter(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < ADAPTER_ATOL, diff
    return diff


def assert_same_metrics(one: dict, two: dict) -> None:
    for key in ("reward", "rewards/length_target/mean", "completion_tokens",
                "completions/mean_length", "frac_reward_zero_std"):
        assert one[key] == two[key], key
    for key in ("grad_norm", "entropy"):
        assert two[key] == pytest.approx(one[key], rel=REL_TOL), key
    assert two["loss"] == pytest.approx(one["loss"], rel=REL_TOL, abs=1e-6)


SHARPEN = 8.0  # logits' spread about 1.3 rather than 0.16: peaked, still varied answers


@pytest.fixture(scope="module")
def peaky_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny random model with its (tied) embeddings scaled up, so that its next-token
    distributions are peaked like a trained model's. The random model's are almost uniform over
    49k tokens, so a float-rounding change in a logit (another batch shape) can move a sampled
    token; here it takes a real change of the weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("peaky")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(SHARPEN)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def runs(peaky_model_dir, tmp_path_factory):
    """The same two steps trained on one process, on two, and on two sharded (FSDP)."""
    root = tmp_path_factory.mktemp("dist")
    config = write_config(peaky_model_dir, root / "config.yaml")
    train(config, root / "one", 1)
    train(config, root / "two", 2)
    train(config, root / "fsdp", "fsdp")
    return root, config


def test_two_processes_train_the_same_adapter_as_one(runs):
    root, _ = runs
    one, two = root / "one", root / "two"
    ready = {d.name: [e for e in events_of(d, "status") if e["state"] == "ready"]
             for d in (one, two)}
    assert [e["world_size"] for e in ready["one"]] == [1]
    assert [e["world_size"] for e in ready["two"]] == [2]  # one ready event: written once
    assert ready["two"][0]["backend"] == "gloo" and len(set(ready["two"][0]["pids"])) == 2
    m1, m2 = events_of(one, "metrics"), events_of(two, "metrics")
    assert all(m["grad_norm"] > 0 and m["reward_std"] > 0 for m in m1)  # something to learn
    assert [m["step"] for m in m2] == [1, 2]  # each step once, by the main process
    for a, b in zip(m1, m2):
        assert_same_metrics(a, b)
    assert len(events_of(two, "samples")) == 2
    assert [e["step"] for e in events_of(two, "checkpoint")] == [1, 2]
    assert [e["state"] for e in events_of(two, "status")][-1] == "finished"
    # the samples shown are the global batch's, the same as one process shows
    assert events_of(one, "samples")[0]["items"] == events_of(two, "samples")[0]["items"]
    assert_same_adapter(adapter(one / "adapter"), adapter(two / "adapter"))
    for step in (1, 2):
        assert_same_adapter(adapter(one / "checkpoints" / f"step-{step}"),
                            adapter(two / "checkpoints" / f"step-{step}"))


def test_two_sharded_processes_train_the_same_adapter_as_one(runs):
    """FSDP: each process holds half of every weight (the frozen base too), and the run is
    still the one-process run: same answers, losses, gradients and adapter."""
    root, _ = runs
    one, fsdp = root / "one", root / "fsdp"
    ready = [e for e in events_of(fsdp, "status") if e["state"] == "ready"]
    assert len(ready) == 1 and ready[0]["world_size"] == 2 and ready[0]["sharding"] == "fsdp"
    whole = [e for e in events_of(one, "status") if e["state"] == "ready"][0]
    assert whole["sharding"] is None and whole["params_per_process"] == [whole["total_params"]]
    total = ready[0]["total_params"]
    assert total == whole["total_params"]
    for held in ready[0]["params_per_process"]:  # half each, give or take a row of padding
        assert abs(held - total / 2) < total * 0.01, (held, total)
    two = [e for e in events_of(root / "two", "status") if e["state"] == "ready"][0]
    assert two["sharding"] is None and two["params_per_process"] == [total, total]
    m1, m2 = events_of(one, "metrics"), events_of(fsdp, "metrics")
    assert [m["step"] for m in m2] == [1, 2]
    for a, b in zip(m1, m2):
        assert_same_metrics(a, b)
    assert events_of(one, "samples")[0]["items"] == events_of(fsdp, "samples")[0]["items"]
    assert [e["step"] for e in events_of(fsdp, "checkpoint")] == [1, 2]
    assert_same_adapter(adapter(one / "adapter"), adapter(fsdp / "adapter"))
    for step in (1, 2):
        assert_same_adapter(adapter(one / "checkpoints" / f"step-{step}"),
                            adapter(fsdp / "checkpoints" / f"step-{step}"))


def test_sharded_checkpoints_resume_on_one_process_and_the_other_way_round(runs):
    """A checkpoint written by sharded processes (its adapter and optimizer state gathered
    whole) resumes on one process, and a one-process checkpoint resumes sharded: each third
    step is the one a one-process resume of the one-process checkpoint trains."""
    root, config = runs
    resumed = {}
    for written_by, on in (("one", 1), ("fsdp", 1), ("one", "fsdp")):
        run = root / f"{written_by}-resumed-on-{on}-again"
        shutil.copytree(root / written_by, run)
        train(config, run, on, "--resume", "--max-steps", "3")
        assert [e["step"] for e in events_of(run, "status") if e["state"] == "resumed"] == [2]
        resumed[written_by, on] = run
    reference = resumed["one", 1]
    for key in (("fsdp", 1), ("one", "fsdp")):
        assert_same_metrics(events_of(reference, "metrics")[-1],
                            events_of(resumed[key], "metrics")[-1])
        assert_same_adapter(adapter(reference / "adapter"), adapter(resumed[key] / "adapter"))


def test_sharded_evaluation_reference_and_reused_batches_match_one_process(peaky_model_dir,
                                                                           tmp_path):
    """What runs outside the training pass goes through the shards too: held-out evaluation
    (every process answers, the main one writes), the KL term's reference log-probs and the
    old log-probs of a batch trained on twice (num_iterations 2)."""
    config = write_config(peaky_model_dir, tmp_path / "config.yaml", max_steps=3,
                          data={"eval_share": 0.2},
                          grpo={"beta": 0.04, "num_iterations": 2},
                          train={"eval_steps": 1, "eval_max_questions": 4})
    train(config, tmp_path / "one", 1)
    train(config, tmp_path / "fsdp", "fsdp")
    evals = {d: [{k: v for k, v in e.items() if k != "time"}
                 for e in events_of(tmp_path / d, "eval")] for d in ("one", "fsdp")}
    assert [e["step"] for e in evals["fsdp"]] == [0, 1, 2, 3]  # written once each
    assert evals["fsdp"] == evals["one"]
    m1, m2 = events_of(tmp_path / "one", "metrics"), events_of(tmp_path / "fsdp", "metrics")
    assert m1[-1]["kl"] > 0  # the reference term is there to compare
    for a, b in zip(m1, m2):
        assert_same_metrics(a, b)
        assert b["kl"] == pytest.approx(a["kl"], rel=REL_TOL, abs=1e-7)
    assert_same_adapter(adapter(tmp_path / "one" / "adapter"),
                        adapter(tmp_path / "fsdp" / "adapter"))


def test_an_accelerate_config_with_fsdp_shards_and_trains_with_torch_adamw(runs, tmp_path):
    """The accelerate config-file route (distributed_type FSDP, layers kept gathered between
    forward and backward) with the default optimizer, bitsandbytes' 8-bit AdamW, which cannot
    update slices: the run shards, trains with torch's AdamW and its first step is the
    one-process run's."""
    from core.runs import free_port

    root, _ = runs
    accelerate_config = tmp_path / "accelerate.yaml"
    accelerate_config.write_text(yaml.safe_dump({
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "FSDP",
        "fsdp_config": {"fsdp_version": 2, "fsdp_reshard_after_forward": False},
        "mixed_precision": "no", "num_machines": 1, "num_processes": 2,
        "main_process_port": free_port()}))
    model_dir = yaml.safe_load((root / "config.yaml").read_text())["model"]["source"]
    config = write_config(model_dir, tmp_path / "config.yaml", max_steps=1,
                          train={"optimizer": "adamw_8bit"})
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                             str(accelerate_config), "-m", "core", "train", str(config),
                             "--run-dir", str(tmp_path / "run")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ready = [e for e in events_of(tmp_path / "run", "status") if e["state"] == "ready"][0]
    assert ready["sharding"] == "fsdp" and ready["optimizer"] == "AdamW"
    assert max(ready["params_per_process"]) < ready["total_params"] * 0.51
    assert_same_metrics(events_of(root / "one", "metrics")[0],
                        events_of(tmp_path / "run", "metrics")[0])
    assert [e["state"] for e in events_of(tmp_path / "run", "status")][-1] == "finished"


def test_a_4bit_base_is_not_sharded(tiny_model_dir, tmp_path):
    config = write_config(tiny_model_dir, tmp_path / "config.yaml", precision="4bit")
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    result = subprocess.run(train_command(config, tmp_path / "run", "fsdp"), cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    failed = [e for e in events_of(tmp_path / "run", "status") if e["state"] == "failed"]
    assert [e["message"] for e in failed] == [
        "A sharded (FSDP) run needs a 16- or 32-bit base, not 4bit: set model.precision to "
        "16bit, or train the 4-bit base data parallel (accelerate launch --multi_gpu)."]


def test_checkpoints_resume_across_process_counts(runs):
    """A checkpoint written by two processes resumes on one, and one written by one process
    resumes on two: each third step is the one the other process count trains from the same
    checkpoint."""
    root, config = runs
    for written_by in ("one", "two"):
        resumed = {}
        for processes in (1, 2):
            run = root / f"{written_by}-resumed-on-{processes}"
            shutil.copytree(root / written_by, run)
            train(config, run, processes, "--resume", "--max-steps", "3")
            assert [e["step"] for e in events_of(run, "status") if e["state"] == "resumed"] == [2]
            assert [m["step"] for m in events_of(run, "metrics")] == [1, 2, 3]
            resumed[processes] = run
        assert_same_metrics(events_of(resumed[1], "metrics")[-1],
                            events_of(resumed[2], "metrics")[-1])
        assert_same_adapter(adapter(resumed[1] / "adapter"), adapter(resumed[2] / "adapter"))


@pytest.mark.parametrize("victim, processes", [(1, 2), (0, 2), (1, "fsdp")],
                         ids=["other-process", "main-process", "other-sharded-process"])
def test_a_killed_process_ends_the_run_with_one_line_and_it_resumes(tiny_model_dir, tmp_path,
                                                                     victim, processes):
    config = write_config(tiny_model_dir, tmp_path / "config.yaml", max_steps=500, save_steps=2)
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    proc = subprocess.Popen(train_command(config, run_dir, processes), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not [c for c in events_of(run_dir, "checkpoint")
                                              if c["step"] >= 2]:
            assert proc.poll() is None, "the run ended before it was killed"
            time.sleep(0.5)
        pids = [e for e in events_of(run_dir, "status") if e["state"] == "ready"][0]["pids"]
        killed_at = time.time()
        os.kill(pids[victim], signal.SIGKILL)
        code = proc.wait(timeout=DEATH_NOTICED_S)
        ended_in = time.time() - killed_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert code != 0 and ended_in < DEATH_NOTICED_S
    failed = [e for e in events_of(run_dir, "status") if e["state"] == "failed"]
    assert len(failed) == 1
    message = failed[0]["message"]
    assert message == (f"Training process {victim + 1} of 2 ended unexpectedly, so the run "
                       f"stopped. Resume it to go on from its last checkpoint.")
    last = max(c["step"] for c in events_of(run_dir, "checkpoint"))
    train(config, run_dir, processes, "--resume", "--max-steps", str(last + 1))
    assert [e["state"] for e in events_of(run_dir, "status")][-1] == "finished"
    assert events_of(run_dir, "metrics")[-1]["step"] == last + 1
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()


def test_prompts_that_do_not_divide_among_the_processes_are_refused_in_one_line(
        tiny_model_dir, tmp_path):
    config = write_config(tiny_model_dir, tmp_path / "config.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    result = subprocess.run(train_command(config, tmp_path / "run", 2, "--set",
                                          "grpo.prompts_per_step=3"),
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    failed = [e for e in events_of(tmp_path / "run", "status") if e["state"] == "failed"]
    assert [e["message"] for e in failed] == [
        "grpo.prompts_per_step (3) must be a multiple of train.processes (2): each process "
        "takes whole prompts."]


def test_a_writer_after_a_killed_one_never_glues_onto_its_torn_line(tmp_path):
    """The main process can die mid-line; another process then writes the error event."""
    from core.events import EventLog

    (tmp_path / "events.jsonl").write_text('{"type": "metrics", "step": 1}\n{"type": "metr')
    log = EventLog(tmp_path)
    log.emit("status", state="failed", message="Training process 1 of 2 ended unexpectedly.")
    log.close()
    assert [e["type"] for e in read_events(tmp_path)[0]] == ["metrics", "status"]
