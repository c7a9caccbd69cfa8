"""Wizard flows beyond the main path, in a real browser against a real studio and real workers:
scoring rewards on real model output ("Try it"), the trained-vs-base chat, settings saved as
YAML and loaded back, and Resume of a stopped run. Tiny settings throughout (1 prompt x 2
answers, 8 tokens). Screenshots go to test-artifacts/browser/.
"""
import yaml
import pytest

from core.runs import RunManager
from studio.presets import quick_demo_config

from .conftest import (answered, download, fill, open_with_sample_data, pick,
                       run_state, run_step, shot, tab, tiny_run, wait_text, wait_until,
                       wait_value)

pytestmark = pytest.mark.model


def _text(page, selector: str) -> str:
    return page.inner_text(selector)


def _tiny_trained_run(runs_dir):
    """A one-step run with an adapter, trained by a real worker the studio did not start."""
    cfg = quick_demo_config(gpu=False)
    cfg.name = "chat-run"
    cfg.grpo.num_generations, cfg.grpo.prompts_per_step = 2, 1
    cfg.grpo.max_completion_length = 8
    cfg.train.max_steps, cfg.train.save_steps, cfg.train.threads = 1, 1, 1
    manager = RunManager(runs_dir)
    run_dir = manager.create(cfg)
    manager.start(run_dir)
    return manager, run_dir


def test_try_rewards_then_chat_with_trained_and_base(studio, page):
    url, runs_dir = studio
    manager, run_dir = _tiny_trained_run(runs_dir)  # trains while the rewards are tried

    open_with_sample_data(page, url)
    tab(page, "4 · Train")  # short answers keep "Try it" quick
    page.click("#train-advanced button, #train-advanced .label-wrap")
    fill(page, "knob-grpo-max_completion_length", 8)

    tab(page, "3 · Rewards")
    wait_text(page, "#reward-list", "numeric_match")
    table = _text(page, "#reward-list")
    # each template's column is headed by its name on the page ("Right number")
    templates = [title for t, title in (("numeric_match", "Right number"),
                                        ("tag_partial_credit", "Tag checklist"),
                                        ("length_target", "Length near a target")) if t in table]
    page.click("#reward-try")
    wait_until(lambda: "Scored" in _text(page, "#reward-try-status") or
          "❌" in _text(page, "#reward-try-status"), 180, "the answers to be scored")
    assert "Scored" in _text(page, "#reward-try-status"), _text(page, "#reward-try-status")
    headers = [h.strip() for h in page.locator("#reward-try-table [role=columnheader]").all_inner_texts()]
    assert "total" in " ".join(headers) and all(any(t in h for h in headers) for t in templates)
    # 2 questions x 2 answers, each with a number for every template and the total
    cells = page.locator("#reward-try-table [role=gridcell]")
    assert cells.count() == 4 * len(headers)
    total = page.locator(f"#reward-try-table [data-testid='cell-3-{len(headers) - 1}']")
    float(total.inner_text().strip())
    shot(page, "flows-3-rewards-try")

    assert manager.wait(run_dir, timeout=240) == 0, (run_dir / "worker.log").read_text()[-2000:]
    tab(page, "5 · Try and export")
    question = "What is 2 + 3?"
    # choosing the run loads its model while the user types: the first answer waits for no load
    page.click("#export-refresh")
    wait_value(page, "#export-run input", "chat-run")
    wait_text(page, "#chat-status", "Ready: the final adapter of", timeout=120)
    shot(page, "flows-5-ready")
    fill(page, "chat-question", question)
    page.click("#chat-ask")
    wait_until(lambda: (answered(page, "chat-trained", question) and
                        answered(page, "chat-base", question))
          or "❌" in _text(page, "#chat-status"), 240, "both answers")
    assert "❌" not in _text(page, "#chat-status"), _text(page, "#chat-status")
    # the answers are written word by word: the status names the adapter once both are whole
    wait_text(page, "#chat-status", "Answered by the final adapter", timeout=240)
    # an earlier checkpoint answers when picked; the model stays loaded in between
    pick(page, "export-checkpoint", "step 1")
    fill(page, "chat-question", "What is 4 + 4?")
    page.click("#chat-ask")
    wait_text(page, "#chat-status", "Answered by the checkpoint at step 1", timeout=120)
    shot(page, "flows-5-chat")

    # did it learn? base and trained on the held-out questions: a chart, a line, what changed
    page.click("#eval-run")
    wait_text(page, "#eval-status", "answers changed", timeout=300)
    status = _text(page, "#eval-status")
    assert "❌" not in status and "checkpoint of step 1" in status, status
    assert "held-out questions" in status and "% of the time before training" in status
    page.wait_for_selector("#eval-chart .trace.bars", state="attached")
    assert page.locator("#eval-chart .trace.bars").count() == 2  # before and after
    assert "Question" in _text(page, "#eval-changed")
    shot(page, "flows-5-eval")
    pick(page, "export-checkpoint", "final adapter")  # not scored: nothing shown for it
    wait_until(lambda: not page.locator("#eval-chart").is_visible(), 30, "the result to go")
    pick(page, "export-checkpoint", "step 1")  # scored before: the saved result comes back
    wait_text(page, "#eval-status", "checkpoint of step 1")
    page.wait_for_selector("#eval-chart .trace.bars", state="attached")
    assert page.outside_requests == []


def test_settings_yaml_roundtrip_and_resume(studio, page, tmp_path):
    url, runs_dir = studio
    open_with_sample_data(page, url)
    tiny_run(page, "resume-run", steps=30)

    # save the settings, change one, load the file: the field comes back
    saved = download(page, "#train-save-yaml", "#train-yaml-file", tmp_path / "settings.yaml")
    data = yaml.safe_load(saved.read_text(encoding="utf-8"))
    assert data["name"] == "resume-run" and data["grpo"]["num_generations"] == 2
    assert data["train"]["max_steps"] == 30
    fill(page, "knob-grpo-num_generations", 5)
    fill(page, "knob-name", "changed")
    assert page.input_value("#knob-grpo-num_generations input") == "5"
    page.set_input_files("#train-load-yaml input[type=file], input[type=file][accept*='.yaml']",
                         str(saved))
    wait_text(page, "#train-message", "Loaded settings")
    wait_until(lambda: page.input_value("#knob-grpo-num_generations input") == "2", 20,
          "num_generations to come back")
    assert page.input_value("#knob-name input, #knob-name textarea") == "resume-run"
    shot(page, "flows-4-yaml-loaded")

    # start, stop after a step, resume: the step counter goes on past where it stopped
    page.click("#train-start")
    wait_until(lambda: run_step(page) >= 1, what="the first step")
    page.click("#train-stop")
    wait_until(lambda: run_state(page) == "stopped", what="the run to stop")
    stopped_at = run_step(page)
    run_dir = next(p for p in runs_dir.iterdir() if p.name.endswith("resume-run"))
    assert (run_dir / "checkpoints" / f"step-{stopped_at}").exists()
    shot(page, "flows-4-stopped")
    page.click("#train-resume")
    wait_text(page, "#train-message", "Resuming")
    wait_until(lambda: run_step(page) > stopped_at, what="a step after the resume")
    assert run_state(page) in ("resumed", "training")
    shot(page, "flows-4-resumed")
    page.click("#train-stop")
    wait_until(lambda: run_state(page) == "stopped", what="the resumed run to stop")
    assert page.outside_requests == []


def test_a_start_too_big_to_fit_asks_first(studio, page):
    url, runs_dir = studio
    open_with_sample_data(page, url)
    tiny_run(page, "too-big-run", steps=2)
    for elem, value in {"knob-grpo-prompts_per_step": 64, "knob-grpo-num_generations": 64,
                        "knob-grpo-max_completion_length": 32768}.items():
        fill(page, elem, value)
    wait_text(page, "#train-estimate", "not fit")
    before = sorted(p.name for p in runs_dir.iterdir())
    page.click("#train-start")
    # (and Gradio's own progress timer, '0.4s', gone from the box)
    # The text is read in the same instant the wait sees it settled: a chained event may
    # show the timer again a moment later.
    message = page.wait_for_function(
        "(t => t.includes('will not fit') && !t.includes('processing')"
        " && !/^[0-9.]+s$/m.test(t) && t)"
        "(document.querySelector('#train-message')?.innerText ?? '')").json_value().strip()
    assert "\n" not in message and "Traceback" not in message
    assert page.locator("#train-fit-confirm input[type=checkbox]").is_visible()
    assert not page.locator("#train-fit-confirm input[type=checkbox]").is_checked()
    assert sorted(p.name for p in runs_dir.iterdir()) == before  # nothing was launched
    page.click("#train-start")  # a second press without the tick still does not start
    page.wait_for_timeout(1500)
    assert sorted(p.name for p in runs_dir.iterdir()) == before
    shot(page, "flows-4-too-big-warning")
