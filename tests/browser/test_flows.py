"""Wizard flows beyond the main path, in a real browser against a real studio and real workers:
scoring rewards on real model output ("Try it") and the trained-vs-base chat. Tiny settings throughout (1 prompt x 2
answers, 8 tokens). Screenshots go to test-artifacts/browser/.
"""
import pytest

from core.runs import RunManager
from studio.presets import quick_demo_config

from .conftest import fill, shot, tab
from .test_wizard import _wait

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

    page.goto(url)
    page.wait_for_selector("#machine-info")
    tab(page, "2 · Data")
    page.click("#data-sample")
    page.wait_for_function("document.querySelector('#data-messages').innerText.includes('rows')")
    tab(page, "4 · Train")  # short answers keep "Try it" quick
    page.click("#train-advanced button, #train-advanced .label-wrap")
    fill(page, "knob-grpo-max_completion_length", 8)

    tab(page, "3 · Rewards")
    page.wait_for_function("document.querySelector('#reward-table').innerText.includes('numeric_match')")
    table = _text(page, "#reward-table")
    templates = [t for t in ("numeric_match", "tag_partial_credit", "length_target") if t in table]
    page.click("#reward-try")
    _wait(lambda: "Scored" in _text(page, "#reward-try-status") or
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
    page.click("#export-refresh")
    page.wait_for_function("document.querySelector('#export-run input').value.includes('chat-run')")
    question = "What is 2 + 3?"
    fill(page, "chat-question", question)
    page.click("#chat-ask")

    def answered(elem):
        text = _text(page, f"#{elem}")
        return question in text and len(text.split(question, 1)[1].strip()) > 0

    _wait(lambda: (answered("chat-trained") and answered("chat-base"))
          or "❌" in _text(page, "#chat-status"), 240, "both answers")
    assert "❌" not in _text(page, "#chat-status"), _text(page, "#chat-status")
    shot(page, "flows-5-chat")
    assert page.outside_requests == []
