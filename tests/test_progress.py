"""Signs of life within a step: the worker's progress file (phase, tokens so far), the token
counter inside real generation, and what the page makes of them (phase words, the time left)."""
import time

import torch

from core.config import ModelConfig
from core.events import PROGRESS_FILE, EventLog, Progress, read_progress
from core.generation import make_engine
from core.models import load_model
from core.trainer import Trainer
from studio import watch as w
from studio.estimate import step_time_estimate
from studio.i18n import speaking

from .test_trainer import tiny_config


def test_progress_file_is_replaced_and_throttled(tmp_path):
    p = Progress(tmp_path, every=60)
    p.phase("generating", 3, tokens=0, of=512)
    first = read_progress(tmp_path)
    assert first["phase"] == "generating" and first["step"] == 3 and first["of"] == 512
    p.update(tokens=100)  # within `every`: kept in memory, not written
    assert read_progress(tmp_path)["tokens"] == 0
    p.phase("scoring", 3)  # a new phase is always written, and drops the old phase's details
    now = read_progress(tmp_path)
    assert now["phase"] == "scoring" and "tokens" not in now
    assert now["step_started"] == first["step_started"]  # the same step
    p.phase("generating", 4, tokens=0, of=512)
    assert read_progress(tmp_path)["step_started"] >= now["phase_started"]
    p.clear()
    assert read_progress(tmp_path) is None
    (tmp_path / PROGRESS_FILE).write_text("{half")  # a reader never fails on a bad file
    assert read_progress(tmp_path) is None
    (tmp_path / PROGRESS_FILE).write_text('{"phase": "updating", "step": 2, "done": true, '
                                          '"passes": "4", "of": 1e999}')
    assert read_progress(tmp_path) == {"phase": "updating", "step": 2}  # no number: dropped


def test_token_counter_counts_what_generation_produced(tiny_model_dir):
    loaded = load_model(ModelConfig(source=str(tiny_model_dir), precision="32bit", lora_r=4,
                                    gradient_checkpointing=False), seed=0)
    engine = make_engine("transformers", loaded.model, loaded.tokenizer, loaded.device,
                         max_batch_size=4)  # 6 answers in two chunks
    seen = []
    engine.on_tokens = seen.append
    torch.manual_seed(0)
    gen = engine.generate([[1, 20, 300], [1, 7]], num_generations=3, max_new_tokens=12)
    produced = sum(len(c) for c in gen.completion_ids)
    assert seen == sorted(seen) and seen[-1] == produced  # rising, ending at the true count
    assert len(seen) >= 12  # reported while generating, not once at the end


def test_trainer_reports_each_phase(tiny_model_dir, tmp_path):
    trainer = Trainer(tiny_config(tiny_model_dir, beta=0.04), tmp_path).setup()
    phases = []
    write = trainer.progress._write

    def spy(now):
        phases.append(dict(trainer.progress.state))
        write(now)
    trainer.progress._write = spy
    trainer.step()
    names = [p["phase"] for p in phases]
    assert names[0] == "generating" and names[-1] == "updating"
    assert {"scoring", "reference"} <= set(names)
    assert all(p["step"] == 1 for p in phases)
    gen = next(p for p in phases if p["phase"] == "generating")
    assert gen["of"] == trainer.cfg.grpo.prompts_per_step * trainer.cfg.grpo.num_generations \
        * trainer.cfg.grpo.max_completion_length
    assert read_progress(tmp_path)["passes"] >= 1
    trainer.close()


def test_page_shows_the_phase_and_a_time_left_that_shrinks_within_a_step():
    watch = dict(w.new_watch("/x"), state="training", step=2, max_steps=10,
                 metrics=[{"step": 1, "step_time": 30.0}, {"step": 2, "step_time": 30.0}])
    now = time.time()
    watch["progress"] = {"step": 3, "phase": "generating", "tokens": 1234, "of": 4096,
                         "step_started": now - 10}
    assert w.phase_text(watch) == "generating answers: 1,234 tokens so far (at most 4,096)"
    assert w.eta_seconds(watch, now) == 8 * 30 - 10
    html = w.progress_html(watch)
    assert "1,234 tokens so far" in html and "left" in html and "(estimate)" not in html
    watch["progress"] = {"step": 3, "phase": "updating", "passes": 4, "done": 1,
                         "step_started": now - 10}
    assert w.phase_text(watch) == "updating the model: pass 2 of 4"
    watch["progress"]["step"] = 2  # from a step already counted: old news, not shown
    assert w.phase_text(watch) == ""
    # before the first step the time left comes from the estimate made at Start
    first = dict(w.new_watch("/x"), state="training", step=0, max_steps=10,
                 estimate_step_s=20.0)
    assert w.eta_seconds(first, now) == 200
    assert "(estimate)" in w.progress_html(first)
    assert w.eta_seconds(dict(first, state="stopped"), now) is None


def test_the_progress_line_says_stopping_and_names_engine_and_device_in_plain_words(tmp_path):
    watch = dict(w.new_watch(str(tmp_path)), state="training", step=2, max_steps=10,
                 metrics=[{"step": 1, "step_time": 30.0}, {"step": 2, "step_time": 30.0}],
                 engine="transformers", device="cpu",
                 engine_why={"code": "no_vllm"})
    html = w.progress_html(watch)
    assert "answers written by transformers on the CPU" in html and "left" in html
    # why this engine: on hover, not in parentheses inside the line
    assert "title=\"vLLM is not installed" in html
    (tmp_path / "STOP").touch()  # Stop was pressed: no time left to count down any more
    html = w.progress_html(watch)
    assert "Stopping: the current step ends" in html and "left" not in html
    assert "GPU 2" in w.progress_html(dict(watch, device="cuda:1"))
    with speaking("de"):
        assert "Antworten schreibt transformers auf der CPU" in w.progress_html(watch)
        assert "Wird gestoppt" in w.progress_html(watch)


def test_time_estimate_comes_from_an_earlier_run_of_the_same_model(tmp_path):
    run = tmp_path / "20260101-000000-earlier"
    run.mkdir()
    (run / "config.yaml").write_text("model: {source: default}\n"
                                     "grpo: {prompts_per_step: 2, num_generations: 4}\n")
    log = EventLog(run)
    for step in range(1, 4):  # 8 answers of 50 tokens in 20 s: 0.05 s a token
        log.emit("metrics", step=step, step_time=20.0, completion_tokens=400)
    log.close()
    per_step, text = step_time_estimate([run], "default", 4, 8, 64, 10)
    assert per_step == 4 * 8 * 50 * 0.05
    assert "earlier" in text and "5.0 s per 100 answer tokens" in text and "1m 20s per step" in text
    short, _ = step_time_estimate([run], "default", 4, 8, 25, 10)  # answers capped at 25 tokens
    assert short == 4 * 8 * 25 * 0.05
    none, text = step_time_estimate([run], "Qwen/Qwen2.5-0.5B-Instruct", 4, 8, 64, 10)
    assert none is None and "first step measures it" in text
    assert step_time_estimate([run], "default", "x", 8, 64, 10) == (None, "")
