"""What a beginner expects of the page, in a real browser against a real server and worker:
nothing typed is lost on a reload or a server restart, a banner names the run in progress, the
quick demo asks before it changes anything, Next/Back move between the steps, and a step in
progress says what it is doing and how long is left. Screenshots go to test-artifacts/browser/.
"""
import pytest

from .conftest import (fill, open_studio, open_with_sample_data, pick, reward_form,
                       reward_index, run_state, run_step, shot, start_server, stop_server, tab, wait_loaded, wait_text,
                       wait_until, wait_value)

pytestmark = pytest.mark.model

PHASES = ("generating answers", "scoring the answers", "updating the model")


def value_of(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} input, #{elem_id} textarea").first.input_value()



def selected_tab(page) -> str:
    return page.locator("[role=tab][aria-selected=true]").first.inner_text()


def test_next_and_back_move_between_steps(studio, page):
    url, _ = studio
    open_studio(page, url)
    page.click("#nav-next-data")
    wait_until(lambda: "Data" in selected_tab(page), 10, "the data step")
    page.click("#nav-next-rewards")
    wait_until(lambda: "Rewards" in selected_tab(page), 10, "the rewards step")
    page.click("#nav-back-data")
    wait_until(lambda: "Data" in selected_tab(page), 10, "back to the data step")


def test_quick_demo_asks_before_changing_anything(studio, page):
    url, _ = studio
    open_with_sample_data(page, url)
    tab(page, "4 · Train")
    fill(page, "knob-name", "my-own-run")
    page.click("#train-advanced button, #train-advanced .label-wrap")
    fill(page, "knob-train-learning_rate", 0.0003)
    page.click("#train-demo")
    page.locator("#preset-confirm").first.wait_for(state="visible")
    changes = page.inner_text("#preset-changes")
    assert "Rewards:" in changes and "my-own-run → classroom-demo" in changes
    assert "0.0003 →" in changes
    shot(page, "preset-asks")
    page.click("#preset-cancel")
    page.locator("#preset-confirm").first.wait_for(state="hidden")
    wait_text(page, "#train-message", "Nothing was changed")
    assert value_of(page, "knob-name") == "my-own-run"
    page.click("#train-demo")
    page.locator("#preset-confirm").first.wait_for(state="visible")
    page.click("#preset-apply")
    wait_value(page, "#knob-name input, #knob-name textarea", "classroom-demo")
    wait_text(page, "#train-message", "Loaded the quick demo")
    tab(page, "3 · Rewards")
    wait_text(page, "#reward-list", "numeric_match")
    tab(page, "4 · Train")
    page.click("#train-demo")  # nothing left to change: it says so instead of asking
    wait_text(page, "#train-message", "already loaded")
    assert not page.locator("#preset-confirm").first.is_visible()


def test_reload_and_restart_keep_the_form_and_a_banner_names_the_run(studio, page, tmp_path):
    url, runs_dir = studio
    assert open_studio(page, url) == "none"
    tab(page, "1 · Model")
    fill(page, "knob-model-lora_r", 8)
    tab(page, "2 · Data")
    page.click("#data-sample")
    wait_text(page, "#data-messages", "rows")
    tab(page, "3 · Rewards")
    wait_text(page, "#reward-list", "numeric_match")
    pick(page, "reward-pick", "(length_target)")
    wait_text(page, "#reward-details", "length_target")
    page.click("#reward-add")
    wait_text(page, "#reward-list", "length_target")
    # the reward's weight and settings are edited in place, each change kept at once
    n = reward_index(page, "length_target")
    fill(page, f"reward-{n}-weight", 0.5)
    wait_text(page, "#reward-summary", "0.5 × Length near a target")  # the set in one line
    fill(page, f"reward-{n}-target", 20)
    fill(page, f"reward-{n}-target", 200000)  # too long: said, with the range, and not kept
    wait_text(page, "#reward-message", "from 0 to 100000")
    fill(page, f"reward-{n}-target", 20)
    wait_until(lambda: page.inner_text("#reward-message").strip() == "", 10,
               "the message to clear once the value is right")
    rewards_before = reward_form(page)
    titles = " ".join(title for title, _ in rewards_before)
    assert "length_target" in titles and "numeric_match" in titles
    weight, unit, target, tolerance = rewards_before[n][1]
    assert (weight, unit, target) == ("0.5", "words", "20")

    tab(page, "4 · Train")
    assert "No estimate of the time yet" in page.inner_text("#train-time")
    fill(page, "knob-name", "kept-run")
    page.click("#train-advanced button, #train-advanced .label-wrap")
    # answers long enough that a step lasts some seconds and its phases can be seen
    for elem, value in {"knob-grpo-num_generations": 4, "knob-grpo-prompts_per_step": 1,
                        "knob-grpo-max_completion_length": 96, "knob-train-threads": 1,
                        "knob-train-save_steps": 1, "knob-train-max_steps": 30}.items():
        fill(page, elem, value)
    page.click("#train-start")
    wait_until(lambda: run_state(page) in ("training", "ready", "loading_model",
                                           "loading_data"), 60, "the run to start")
    seen = set()

    def phase_shown():
        text = page.inner_text("#train-progress")
        seen.update(p for p in PHASES if p in text)
        return bool(seen) and run_step(page) >= 1 and "left" in text

    wait_until(phase_shown, 240, "a phase within a step and the time left")
    shot(page, "phase-in-step")

    # a reload: the form comes back as it was, and a banner names the run in progress
    page.reload()
    assert wait_loaded(page) == "restored"
    wait_text(page, "#banner-run", "kept-run")
    assert "is training" in page.inner_text("#banner-run")
    assert value_of(page, "knob-model-lora_r") == "8"
    tab(page, "2 · Data")
    wait_value(page, "#knob-data-source input, #knob-data-source textarea", "builtin:")
    tab(page, "3 · Rewards")
    wait_text(page, "#reward-list", "length_target")
    assert reward_form(page) == rewards_before
    shot(page, "reload-kept-form")
    page.click("#banner-watch")
    wait_until(lambda: "Train" in selected_tab(page), 10, "the train step")
    assert value_of(page, "knob-name") == "kept-run"
    page.click("#train-advanced button, #train-advanced .label-wrap")
    assert value_of(page, "knob-grpo-max_completion_length") == "96"
    wait_until(lambda: run_step(page) >= 1, 60, "the run to show")
    page.click("#train-stop")
    wait_until(lambda: run_state(page) == "stopped", 240, "the run to stop")
    # the banner goes with the run's end (the same refresh), not at its next quarter minute
    wait_until(lambda: not page.locator("#banner-run").is_visible(), 3,
               "the banner to go once the run stopped")

    # the time a step takes is now known on this machine, and said before the next Start
    fill(page, "knob-grpo-max_completion_length", 64)
    wait_text(page, "#train-time", "measured on this machine by your run", timeout=20)

    # a new server process on the same folder (a restart): the same form, from the user's folder
    server = start_server(runs_dir)
    try:
        assert open_studio(page, server[0]) == "restored"
        assert value_of(page, "knob-model-lora_r") == "8"
        tab(page, "4 · Train")
        assert value_of(page, "knob-name") == "kept-run"
        wait_until(lambda: not page.locator("#banner-run").is_visible(), 20,
                   "no banner once nothing trains")
    finally:
        stop_server(server[1], runs_dir)

