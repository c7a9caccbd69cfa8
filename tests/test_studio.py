"""The studio's pure parts: config from widget values, chart data from events, estimates,
samples rendering, data inspection, reward set editing. No browser, no model."""
import json
from pathlib import Path

import pytest

from core.config import ConfigError, RunConfig
from core.events import EventLog, read_events
from studio import watch as w
from studio.estimate import (GB, KNOWN_SHAPES, estimate_memory, fit_verdict, lora_params,
                             shape_for_source, shape_from_config)
from studio.form import (cli_command, config_dict_from_values, config_from_values,
                         rewards_from_config, values_from_config)
from studio.presets import quality_settings, quick_demo_config
from studio.step_data import inspect_source, keep_upload
from studio.step_export import adapter_dir, zip_adapter
from studio.step_model import estimate, estimate_parts, source_for_preset
from studio.step_train import fit_warning
from studio.step_rewards import add_reward, remove_reward, score_table
from studio.machine import Machine, detect_machine
from reward_templates import RewardError

ROOT = Path(__file__).resolve().parent.parent


# ---- config <-> widgets ------------------------------------------------------------------

def test_config_roundtrip_through_widget_values():
    cfg = RunConfig.load(ROOT / "examples" / "01-classroom-demo.yaml")
    paths = ["name", "model.source", "model.precision", "model.target_modules",
             "data.source", "data.question_column", "data.max_rows", "grpo.num_generations",
             "grpo.epsilon_high", "train.learning_rate", "train.threads"]
    values = values_from_config(cfg, paths)
    assert values[paths.index("data.question_column")] == ""  # None shows as an empty box
    back = config_from_values(paths, values, rewards_from_config(cfg))
    for p in paths:
        a, b = back, cfg
        for part in p.split("."):
            a, b = getattr(a, part), getattr(b, part)
        assert a == b, p
    assert [r.template for r in back.rewards] == ["numeric_match", "length_target"]
    assert back.rewards[0].params == {"partial_credit_for_number": 0.1}


def test_config_from_values_cleans_widget_output():
    d = config_dict_from_values(
        ["grpo.num_generations", "data.max_rows", "model.target_modules", "data.answer_column"],
        [4.0, "", "q_proj, v_proj", "  "])
    assert d == {"grpo": {"num_generations": 4}, "data": {"max_rows": None, "answer_column": None},
                 "model": {"target_modules": ["q_proj", "v_proj"]}}
    assert isinstance(d["grpo"]["num_generations"], int)


def test_config_from_values_rejects_out_of_range_with_one_line():
    with pytest.raises(ConfigError) as exc:
        config_from_values(["grpo.num_generations"], [1])
    assert "num_generations" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ConfigError):
        config_from_values(["grpo.temperature"], [None])


def test_yaml_saved_from_widgets_loads_back(tmp_path):
    paths = ["name", "grpo.beta", "train.max_steps"]
    cfg = config_from_values(paths, ["x", 0.04, 3], [{"template": "exact_match", "weight": 2}])
    cfg.save(tmp_path / "c.yaml")
    again = RunConfig.load(tmp_path / "c.yaml")
    assert values_from_config(again, paths) == ["x", 0.04, 3]
    assert again.rewards[0].weight == 2.0


def test_cli_command():
    assert cli_command("runs/a/config.yaml", "runs/a") == \
        "python -m core train runs/a/config.yaml --run-dir runs/a"
    assert cli_command("runs/a/config.yaml", "runs/a", processes=4) == \
        "accelerate launch --multi_gpu --num_processes 4 -m core train runs/a/config.yaml " \
        "--run-dir runs/a"


def test_a_run_on_several_gpus_starts_through_accelerate(tmp_path):
    from core.runs import worker_command

    cfg = RunConfig.from_dict({"grpo": {"prompts_per_step": 4}, "train": {"processes": 2}})
    cfg.save(tmp_path / "config.yaml")
    cmd = worker_command(tmp_path)
    launch = cmd.index("accelerate.commands.launch")
    assert cmd[launch + 1:launch + 4] == ["--multi_gpu", "--num_processes", "2"]
    assert cmd[cmd.index("--main_process_port") + 1].isdigit()
    assert cmd[-5:-3] == ["core", "train"] and cmd[-3] == str(tmp_path / "config.yaml")
    RunConfig().save(tmp_path / "config.yaml")
    assert worker_command(tmp_path)[1:4] == ["-m", "core", "train"]
    with pytest.raises(ConfigError, match=r"prompts_per_step \(3\) must be a multiple of "
                       r"train.processes \(2\)"):
        RunConfig.from_dict({"grpo": {"prompts_per_step": 3}, "train": {"processes": 2}})


def test_the_estimate_is_per_gpu_for_a_run_on_several():
    big = Machine(True, "H100", 80 * GB, 79 * GB, 16, gpus=4)
    args = ("Qwen/Qwen2.5-1.5B-Instruct", "4bit", 16, 512, 512, 16, 8, 1, True, "adamw", 0.1)
    one = estimate_parts(big, *args)
    four = estimate_parts(big, *args, 4)
    assert four["base weights"] == one["base weights"]  # every GPU holds the whole model
    assert four["generation cache"] == one["generation cache"] / 4  # and a quarter of the answers
    _, text = estimate(big, *args, 4)
    assert "on each of the 4 GPUs" in text


def test_quality_levels_and_quick_demo():
    fast, best = quality_settings(1), quality_settings(5)
    assert all(f <= b for f, b in zip(fast, best)) and fast != best
    assert quality_settings("7") == best  # clamped
    demo = quick_demo_config(gpu=False)
    assert demo.model.source == "default" and demo.train.max_steps <= 20


# ---- estimates -----------------------------------------------------------------------

def test_shape_from_config_matches_the_embedded_model_size():
    cfg = json.loads((Path(__import__("core.models").models.embedded_model_dir())
                      / "config.json").read_text())
    shape = shape_from_config(cfg)
    assert abs(shape.params - 134.5e6) / 134.5e6 < 0.01
    assert shape_for_source("default") == KNOWN_SHAPES["default"]
    assert shape_for_source("no/such-model-anywhere") is None


def test_estimate_grows_with_model_precision_rank_and_length():
    s = KNOWN_SHAPES["default"]
    base = estimate_memory(s)["total"]
    assert estimate_memory(s, precision="32bit")["total"] > estimate_memory(s, precision="16bit")["total"] > base
    assert estimate_memory(s, lora_r=128)["total"] > base
    # dynamic 4-bit: between 4-bit and 16-bit, growing with the share kept as it is
    dyn = [estimate_memory(s, precision="dynamic4bit", keep_share=k)["base weights"]
           for k in (0.0, 0.1, 0.2)]
    assert dyn[0] == estimate_memory(s)["base weights"] < dyn[1] < dyn[2]
    assert dyn[2] < estimate_memory(s, precision="16bit", gpu=True)["base weights"] * 1.2
    assert estimate_memory(s, completion_tokens=1024)["total"] > base
    assert estimate_memory(s, gradient_checkpointing=False)["total"] > base
    assert estimate_memory(KNOWN_SHAPES["Qwen/Qwen2.5-1.5B-Instruct"])["total"] > base
    assert lora_params(s, 16) * 2 == lora_params(s, 32)
    # the classroom demo measures about 1.4 GB peak RSS on CPU; the estimate is the same order
    demo = estimate_memory(s, prompts_per_step=4, num_generations=6, completion_tokens=32)
    assert 0.5 * GB < demo["total"] < 4 * GB
    # on a CPU with room for them, the float32 copies the model samples from count too
    copies = estimate_memory(s, available_bytes=16 * GB)
    assert copies["sampling copy"] == 4 * (s.params - s.embedding_params)
    assert copies["total"] == base + copies["sampling copy"]
    assert "sampling copy" not in estimate_memory(s, available_bytes=1 * GB)
    assert "sampling copy" not in estimate_memory(s, available_bytes=16 * GB, gpu=True)


def test_fit_verdicts():
    assert fit_verdict(1 * GB, 10 * GB)[0] == "ok"
    assert fit_verdict(9 * GB, 10 * GB)[0] == "tight"
    verdict, line = fit_verdict(20 * GB, 10 * GB)
    assert verdict == "too_big" and "not fit" in line


def test_estimate_markdown_warns_on_a_small_machine():
    small = Machine(False, "cpu", 2 * GB, 1 * GB, 2)
    big = Machine(True, "H100", 80 * GB, 79 * GB, 16)
    args = ("Qwen/Qwen2.5-1.5B-Instruct", "32bit", 64, 512, 512, 8, 8, 1, True, "adamw")
    assert estimate(small, *args)[0] == "too_big"
    assert estimate(big, *args)[0] == "ok"
    assert estimate(big, "some/unknown-model", *args[1:])[0] == "unknown"
    assert estimate(big, "default", "4bit", None, "x", 1, 1, 2, 1, True, "adamw")[0] == "unknown"


def test_a_run_too_big_to_fit_needs_a_second_explicit_yes():
    for verdict in ("ok", "tight", "unknown"):
        assert fit_warning(verdict, confirmed=False) is None
    line = fit_warning("too_big", confirmed=False)
    assert line and "\n" not in line and "not fit" in line and "I understand" in line
    assert fit_warning("too_big", confirmed=True) is None


def test_machine_is_detected():
    m = detect_machine()
    assert m.total_bytes > 0 and m.available_bytes > 0 and m.cores >= 1
    assert ("GPU" in m.describe()) == m.gpu


def test_presets():
    assert source_for_preset("default", "x") == ("default", False)
    assert source_for_preset("__hub__", "default") == ("", True)
    assert source_for_preset("__local__", "/my/model") == ("/my/model", True)


# ---- events -> charts, progress, samples ------------------------------------------------

def _write_run(tmp_path):
    log = EventLog(tmp_path)
    log.emit("status", state="ready", message="Model and data ready", engine="transformers",
             device="cpu")
    log.emit("status", state="training", message="Training", step=0, max_steps=4)
    for step in (1, 2):
        log.emit("samples", step=step, items=[
            {"prompt": "2+2 <b>?</b>", "answer": "4", "completion": "<think>add</think><answer>4</answer>",
             "rewards": {"numeric_match": 1.0, "length_target": None}, "total": 1.0,
             "truncated": False}])
        log.emit("metrics", step=step, max_steps=4, reward=0.5 * step, loss=0.1, kl=None,
                 reward_std=0.2, step_time=10.0, **{"completions/mean_length": 7.0,
                                                    "rewards/numeric_match/mean": 0.4 * step,
                                                    "rewards/length_target/mean": 0.1})
    log.close()


def test_fold_events_and_chart_data(tmp_path):
    _write_run(tmp_path)
    events, offset = read_events(tmp_path)
    watch = w.fold_events(w.new_watch(str(tmp_path)), events[:3], 0)
    watch = w.fold_events(watch, events[3:], offset)  # incremental folding == all at once
    assert watch == w.fold_events(w.new_watch(str(tmp_path)), events, offset)
    assert watch["state"] == "training" and watch["step"] == 2 and watch["max_steps"] == 4
    assert watch["engine"] == "transformers"
    data = w.chart_data(watch["metrics"])
    assert data["Reward"]["total"] == ([1, 2], [0.5, 1.0])
    assert data["Reward"]["numeric_match"] == ([1, 2], [0.4, 0.8])
    assert data["KL to the base model"]["kl"] == ([], [])  # null values are skipped
    assert data["Completion length (tokens)"]["completions/mean_length"][1] == [7.0, 7.0]
    fig = w.figure("Reward", data["Reward"])
    assert len(fig.data) == 3
    assert w.eta_seconds(watch) == pytest.approx(20.0)
    html = w.progress_html(watch)
    assert "Step 2 / 4" in html and "transformers" in html and "20s left" in html


def test_failed_run_shows_one_line_and_keeps_traceback():
    watch = w.fold_events(w.new_watch("x"), [
        {"type": "error", "message": "Column 'q' not found.", "traceback": "Traceback ...\nKeyError"},
        {"type": "status", "state": "failed", "message": "Column 'q' not found."}], 10)
    assert w.status_line(watch) == "❌ Column 'q' not found."
    assert "KeyError" in watch["traceback"]


def test_samples_html_escapes_and_highlights(tmp_path):
    _write_run(tmp_path)
    watch = w.fold_events(w.new_watch(), *read_events(tmp_path))
    html = w.samples_html(watch["samples"])
    assert "<b>?</b>" not in html and "&lt;b&gt;?&lt;/b&gt;" in html
    assert '<span class="aha-answer">&lt;answer&gt;4&lt;/answer&gt;</span>' in html
    assert '<span class="aha-think">' in html and "n/a" in html and "Step 2" in html
    assert html.index("Step 2") < html.index("Step 1")  # newest first
    hostile = w.highlight("<script>alert(1)</script><answer>x")
    assert "<script>" not in hostile and 'class="aha-answer"' in hostile


def test_format_duration():
    assert w.format_duration(None) == "-"
    assert w.format_duration(65) == "1m 05s"
    assert w.format_duration(3700) == "1h 01m"


# ---- data step -----------------------------------------------------------------------

def test_inspect_source_detects_columns_and_reports_rows(tmp_path):
    csv = tmp_path / "qa.csv"
    csv.write_text("Problem,Solution\nWhat is 2+2?,4\nWhat is 3+3?,\n", encoding="utf-8")
    columns, rows, mapping, text, sample = inspect_source(str(csv))
    assert columns == ["Problem", "Solution"] and len(rows) == 2
    assert mapping["question"] == "Problem" and mapping["answer"] == "Solution"
    assert "row 2" in text  # the empty answer, by its data row number
    *_, text, _ = inspect_source(str(csv), needing=["numeric_match"])
    assert "row 2" in text and "numeric_match" in text
    assert sample[0] == {"question": "What is 2+2?", "answer": "4"}


def test_inspect_source_bad_inputs_give_one_line(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"question": "a", ', encoding="utf-8")
    *_, text, sample = inspect_source(str(broken))
    assert text.startswith("- ❌") and "\n" not in text.strip() and sample == []
    assert "Choose a file" in inspect_source("")[3]
    columns, _, mapping, text, _ = inspect_source("builtin:arithmetic?n=5", question="nope")
    assert mapping["question"] == "question"  # an unknown preferred column falls back


def test_keep_upload_copies_out_of_the_temp_cache(tmp_path):
    src = tmp_path / "my data (1).csv"
    src.write_text("q,a\n1,2\n")
    kept = Path(keep_upload(str(src), tmp_path / "uploads"))
    assert kept.exists() and kept.parent.name == "uploads" and " " not in kept.name
    assert keep_upload(str(src), tmp_path / "uploads") == str(kept)


# ---- rewards step ----------------------------------------------------------------------

def test_add_and_remove_rewards():
    rs = add_reward([], "numeric_match", 1, "{}")
    rs = add_reward(rs, "length_target", 0.5, '{"target": 3}')
    assert [r["template"] for r in rs] == ["numeric_match", "length_target"]
    with pytest.raises(RewardError):
        add_reward(rs, "length_target", 1, '{"target": ')          # broken JSON
    with pytest.raises(RewardError):
        add_reward(rs, "numeric_match", 1, '{"no_such_setting": 1}')
    with pytest.raises(RewardError):
        add_reward(rs, "", 1, "{}")
    assert remove_reward(rs, 0) == rs[1:]
    with pytest.raises(RewardError):
        remove_reward(rs, 5)


def test_score_table_has_each_template_and_total():
    rs = [{"template": "numeric_match", "weight": 1.0, "params": {}},
          {"template": "length_target", "weight": 0.5, "params": {"unit": "words", "target": 1}}]
    table = score_table(rs, ["2+2?"], ["4"], [["4", "five"]])
    # the templates by their names on the page, not their ids
    assert table["headers"] == ["question", "completion", "Right number", "Length near a target",
                                "total"]
    assert table["data"][0][2] == 1.0 and table["data"][1][2] < 1.0


# ---- export ------------------------------------------------------------------------------

def test_zip_adapter_takes_the_newest_checkpoint_without_optimizer_state(tmp_path):
    import zipfile

    from core.config import RunConfig
    RunConfig().save(tmp_path / "config.yaml")
    for step in (2, 10):
        ck = tmp_path / "checkpoints" / f"step-{step}"
        ck.mkdir(parents=True)
        (ck / "adapter_model.safetensors").write_bytes(b"w%d" % step)
        (ck / "adapter_config.json").write_text("{}")
        (ck / "optimizer.pt").write_bytes(b"big")
    assert adapter_dir(tmp_path).name == "step-10"
    archive = zipfile.ZipFile(zip_adapter(tmp_path))
    assert sorted(archive.namelist()) == ["README.md", "adapter_config.json",
                                          "adapter_model.safetensors", "aha_config.yaml",
                                          "reward.svg"]
    # the run's card, written for the checkpoint (the folder's own README is not taken)
    card = archive.read("README.md").decode()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "## Rewards" in card
    assert "More Information Needed" not in card
    with pytest.raises(FileNotFoundError):
        zip_adapter(tmp_path / "empty")


# ---- process layout ----------------------------------------------------------------------

def test_the_ui_process_never_imports_torch():
    import subprocess
    import sys
    code = ("import sys; sys.path.insert(0, '.'); from studio.app import build_app; "
            "build_app(sys.argv[1]); from core.runs import RunManager; "
            "print('torch' in sys.modules)")
    import tempfile
    out = subprocess.run([sys.executable, "-c", code, tempfile.mkdtemp()], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("False")


def test_run_manager_stop_file_is_the_trainers():
    from core import runs, trainer
    assert runs.STOP_FILE == trainer.STOP_FILE


def test_optional_numbers_are_text_boxes_empty_meaning_automatic():
    d = config_dict_from_values(["train.threads", "grpo.epsilon_high", "data.max_rows"],
                                ["2", "0.3", ""])
    assert d == {"train": {"threads": 2}, "grpo": {"epsilon_high": 0.3}, "data": {"max_rows": None}}
    assert values_from_config(RunConfig(), ["train.threads"]) == [""]
    with pytest.raises(ConfigError) as exc:
        config_from_values(["train.threads"], ["two"])
    assert "train.threads" in str(exc.value)


def test_download_scratch_is_swept_after_an_hour(tmp_path, monkeypatch):
    import os
    import time

    from studio import jobs

    monkeypatch.setattr(jobs, "SCRATCH", tmp_path / "scratch")
    old, new = jobs.scratch_dir("aha-old-"), jobs.scratch_dir("aha-new-")
    (old / "adapter.zip").write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    assert jobs.sweep_scratch() == 1
    assert not old.exists() and new.exists()


def test_pages_watching_one_run_share_its_charts():
    from studio import watch as w

    cache = w.ChartCache(size=2)
    events = [{"type": "metrics", "step": i, "time": float(i), "reward": 0.1 * i} for i in (1, 2)]
    a = w.fold_events(w.new_watch("run-a"), events, 10)
    b = w.fold_events(w.new_watch("run-a"), events, 10)   # another page, same run and steps
    first = cache.figures(a)
    assert cache.figures(b) is first and len(first) == len(w.CHARTS)
    more = w.fold_events(a, [{"type": "metrics", "step": 3, "time": 3.0, "reward": 0.3}], 20)
    assert cache.figures(more) is not first          # a new step: new charts
    cache.figures(w.fold_events(w.new_watch("run-b"), events, 10))
    assert cache.figures(a) is not first             # the oldest of three went (size 2)


def test_coach_notes_explain_the_charts():
    from studio import watch as w

    def step(i, **extra):
        return {"type": "metrics", "step": i, "time": float(i), "reward": 0.5,
                "completions/clipped_ratio": 0.9, **extra}

    wt = w.fold_events(w.new_watch("r"), [step(i) for i in range(1, 17)], 10)
    codes = [c for c, _ in w.coach_notes(wt)]
    assert codes == ["cut_off", "no_kl", "flat", "loss"]
    html = w.health_html(wt)
    assert "Reading the charts" in html and "(beta)” is 0" in html and "Learning check" not in html
    # answers cut off in the first steps alone are no news: an untrained model rambles
    first = w.fold_events(w.new_watch("r"), [step(1)], 10)
    assert "cut_off" not in [c for c, _ in w.coach_notes(first)]
    moving = w.fold_events(w.new_watch("r"), [step(i, reward=0.1 * i, kl=0.01,
                                                   **{"completions/clipped_ratio": 0.0})
                                              for i in range(1, 17)], 10)
    assert [c for c, _ in w.coach_notes(moving)] == ["loss"]
    assert w.coach_notes(w.new_watch("r")) == []


def test_queue_eta_works_out_the_whole_line_once(tmp_path):
    """Each place waits for the steps of the runs ahead of it; the line is read once per
    ETA_SECONDS however many pages ask (30 waiting pages made the server parse 29 configs each)."""
    class Line:  # what queue_eta reads of a RunManager: its line and its running runs
        root, max_workers, reads = tmp_path, 1, 0

        def running(self):
            return []

        def waiting(self):
            self.reads += 1
            return [{"run_dir": str(tmp_path / f"r{i}"), "max_steps": 3} for i in range(2)] + \
                [{"run_dir": str(tmp_path / "r2")}, {"run_dir": str(tmp_path / "r3")}]

    (tmp_path / "r2").mkdir()  # a waiting run whose steps only its config says
    (tmp_path / "r2" / "config.yaml").write_text("train: {max_steps: 5}\n")
    line = Line()
    etas = [w.queue_eta(line, place, default_step_s=20.0) for place in (1, 2, 3, 4, 3, 1)]
    assert etas == [0, 60, 120, 210, 120, 0]
    assert line.reads == 1
