"""Numbers typed into the page, in a real browser against a real server: a setting outside its
range is put back inside with one line in the page's language (never a framework error, and no
later button fails because of it); the reward form names what is wrong with a weight or a
setting and shows the value in use; the "Try it" table names each reward in words and shows
every score without scrolling sideways. Screenshots go to test-artifacts/browser/."""
import pytest

from studio.i18n import t

from .conftest import (fill, open_studio, open_with_sample_data, pick, shot, wait_text,
                       wait_until, wait_value)

RAW = ("greater than maximum", "less than minimum")  # Gradio's own words for a range


@pytest.fixture(params=["en-US", "de-DE"])
def locale(request):
    return request.param


def lang_of(page) -> str:
    return page.evaluate("document.documentElement.lang")


def info(page, elem_id: str) -> str:
    """The line under a box's label: its help, or what was wrong with the number typed."""
    return " ".join(page.inner_text(f"#{elem_id} .info-text").split())


def value_of(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} input").first.input_value()


def toasts(page) -> list[str]:
    return page.locator(".toast-body").all_inner_texts()


@pytest.fixture(autouse=True)
def log_start(studio):
    """Where the server's log stood when the test began (the server serves the module)."""
    return (studio[1] / "server.log").stat().st_size


def no_framework_error(page, runs_dir, since: int) -> None:
    assert toasts(page) == [], toasts(page)
    with open(runs_dir / "server.log", "rb") as f:
        f.seek(since)
        log = f.read().decode(errors="replace")
    assert not any(words in log for words in RAW), log[-2000:]


def test_a_setting_out_of_range_is_put_back_with_one_line(studio, page, log_start):
    url, runs_dir = studio
    open_studio(page, url)
    lang = lang_of(page)
    rank = t("settings.model.lora_r.label", lang)
    for typed in (600, 99999999999):
        fill(page, "knob-model-lora_r", typed)
        wait_text(page, "#knob-model-lora_r .info-text",
                  t("form.range.outside", lang, label=rank,
                    range=t("form.range.between", lang, lo="1", hi="512"), value="512"))
        assert value_of(page, "knob-model-lora_r") == "512"
    shot(page, f"numbers-rank-{lang}")
    fill(page, "knob-model-lora_r", 8)  # a good number: the help comes back
    wait_until(lambda: info(page, "knob-model-lora_r").startswith(
        " ".join(t("settings.model.lora_r.help", lang).split())[:40]), 10, "the help")
    assert value_of(page, "knob-model-lora_r") == "8"

    # the learning rate typed absurdly high, the Advanced panel closed, then the quick demo:
    # the box holds the top of its range, says so, and the demo asks its question
    page.click("#tab-train-button")
    page.click("#train-advanced button, #train-advanced .label-wrap")
    box = page.locator("#knob-train-learning_rate input").first
    box.fill("1e308")
    page.click("#train-advanced button, #train-advanced .label-wrap")  # leaves the box
    page.click("#train-demo")
    page.locator("#preset-confirm").first.wait_for(state="visible")
    assert t("train.demo.would_change", lang) in page.inner_text("#preset-changes")
    page.click("#train-advanced button, #train-advanced .label-wrap")
    wait_value(page, "#knob-train-learning_rate input", "1")
    assert value_of(page, "knob-train-learning_rate") == "1"
    assert info(page, "knob-train-learning_rate") == "⚠️ " + t(
        "form.range.outside", lang, label=t("settings.train.learning_rate.label", lang),
        range=t("form.range.between", lang, lo="0", hi="1"), value="1")
    shot(page, f"numbers-learning-rate-{lang}")
    no_framework_error(page, runs_dir, log_start)


def test_the_try_it_sliders_take_any_typed_number(studio, page, log_start):
    url, runs_dir = studio
    open_studio(page, url)
    lang = lang_of(page)
    page.click("#tab-rewards-button")
    fill(page, "reward-try-questions", 99)  # the slider's own number box
    wait_text(page, "#reward-try-questions .info-text",
              t("form.range.outside", lang, label=t("rewards.try.questions", lang),
                range=t("form.range.between", lang, lo="1", hi="4"), value="4"))
    wait_value(page, "#reward-try-questions input[type=number]", "4")
    page.click("#reward-try")  # no rewards yet: our own line, not a range error
    wait_text(page, "#reward-try-status", t("rewards.try.no_rewards", lang))
    no_framework_error(page, runs_dir, log_start)


def test_the_steps_slider_takes_any_typed_number(studio, page, log_start):
    url, runs_dir = studio
    open_studio(page, url)
    lang = lang_of(page)
    page.click("#tab-train-button")
    fill(page, "train-steps", 99999999999)
    wait_text(page, "#train-steps .info-text",
              t("form.range.outside", lang, label=t("train.steps.label", lang),
                range=t("form.range.between", lang, lo="1", hi="500"), value="500"), 10)
    assert value_of(page, "train-steps") == "500"
    page.click("#train-demo")
    page.locator("#preset-confirm").first.wait_for(state="visible")
    no_framework_error(page, runs_dir, log_start)


def test_the_reward_form_says_what_is_wrong_and_shows_the_value_in_use(studio, page, log_start):
    url, runs_dir = studio
    open_studio(page, url)
    lang = lang_of(page)
    page.click("#tab-rewards-button")
    pick(page, "reward-pick", "(length_target)")
    wait_text(page, "#reward-details", "length_target")
    page.click("#reward-add")
    title = t("reward.length_target.title", lang)
    wait_text(page, "#reward-message", t("rewards.msg.added", lang, template=title))
    assert "length_target" not in page.inner_text("#reward-message")  # words, not the id
    wait_text(page, "#reward-list", title)

    # a weight far too big: refused, the range said, and the box shows the weight in use
    weight_range = t("rewards.details.range", lang, min="-100", max="100")
    fill(page, "reward-0-weight", "99999999999999999999999")
    wait_text(page, "#reward-message", t("rewards.item.weight_range", lang, range=weight_range))
    assert t("rewards.item.stays", lang, value="1") in page.inner_text("#reward-message")
    wait_value(page, "#reward-0-weight input", "1")
    assert value_of(page, "reward-0-weight") == "1"
    assert "9999" not in page.inner_text("#reward-summary")

    # a negative weight is allowed, and the summary says in words what it does
    fill(page, "reward-0-weight", -3)
    wait_text(page, "#reward-summary", t("rewards.summary.negative", lang, names=t("rewards.name.quoted", lang,
                                                                   name=title)))
    assert "3 × " + title in page.inner_text("#reward-summary")
    assert page.inner_text("#reward-message").strip() == ""

    # a whole number outside the range is "out of range", not "not a whole number"
    label = t("reward.length_target.param.target.label", lang)
    fill(page, "reward-0-target", 99999999)
    wait_text(page, "#reward-message", t("rewards.item.out_of_range", lang, setting=label,
                                         range=t("rewards.details.range", lang, min="0",
                                                 max="100000")))
    assert t("rewards.item.whole_number", lang) not in page.inner_text("#reward-message")
    wait_value(page, "#reward-0-target input", "50")
    assert value_of(page, "reward-0-target") == "50"
    fill(page, "reward-0-target", 30)  # a good one is kept, and the message goes
    wait_until(lambda: page.inner_text("#reward-message").strip() == "", 10, "the message to go")
    assert value_of(page, "reward-0-target") == "30"
    shot(page, f"numbers-reward-form-{lang}")
    no_framework_error(page, runs_dir, log_start)


@pytest.mark.model
def test_the_try_it_table_names_rewards_in_words_and_fits_the_window(studio, page, log_start):
    url, runs_dir = studio
    open_studio(page, url)
    lang = lang_of(page)
    page.click("#tab-data-button")
    page.click("#data-sample")
    page.click("#tab-rewards-button")
    wait_text(page, "#reward-list", t("reward.numeric_match.title", lang), 60)  # proposed
    pick(page, "reward-pick", "(length_target)")
    page.click("#reward-add")
    wait_text(page, "#reward-list", t("reward.length_target.title", lang))
    page.click("#reward-try")
    wait_until(lambda: "✅" in page.inner_text("#reward-try-status") or
               "❌" in page.inner_text("#reward-try-status"), 240, "the answers to be scored")
    assert "✅" in page.inner_text("#reward-try-status"), page.inner_text("#reward-try-status")
    headers = [" ".join(h.split()) for h in
               page.locator("#reward-try-table [role=columnheader]").all_inner_texts()]
    titles = [t(f"reward.{name}.title", lang) for name in
              ("numeric_match", "tag_partial_credit", "length_target")]
    assert headers == [t("rewards.try.col.question", lang), t("rewards.try.col.completion", lang),
                       *titles, t("rewards.try.col.total", lang)]
    # every column inside the table's box: nothing to scroll to at a 1400 px window
    layout = page.evaluate("""() => {
        const table = document.querySelector('#reward-try-table');
        const box = table.getBoundingClientRect();
        const heads = Array.from(table.querySelectorAll('[role=columnheader]'))
            .map(h => h.getBoundingClientRect().right);
        const scrolls = Array.from(table.querySelectorAll('*')).filter(e => {
            const o = getComputedStyle(e).overflowX;
            return (o === 'auto' || o === 'scroll') && e.scrollWidth > e.clientWidth + 1; });
        return {right: box.right, heads, scrolls: scrolls.length,
                window: document.documentElement.clientWidth}; }""")
    assert layout["scrolls"] == 0 and max(layout["heads"]) <= layout["right"] + 1, layout
    assert layout["right"] <= layout["window"], layout
    # each answer readable in full: its cell wraps it rather than cutting it off
    cut = page.evaluate("""() => Array.from(document.querySelectorAll(
            '#reward-try-table [role=gridcell]')).filter(c => c.offsetParent !== null)
        .map(c => c.querySelector('.cell-wrap') || c)
        .filter(w => w.scrollWidth > w.clientWidth + 1 || w.scrollHeight > w.clientHeight + 1)
        .map(w => w.innerText.slice(0, 60))""")
    assert cut == [], cut
    page.locator("#reward-try-table").scroll_into_view_if_needed()
    shot(page, f"numbers-try-table-{lang}")
    no_framework_error(page, runs_dir, log_start)


def test_a_broken_settings_file_is_refused_in_the_page_language(studio, page, log_start,
                                                                  tmp_path):
    url, runs_dir = studio
    open_studio(page, url)
    lang = lang_of(page)
    page.click("#tab-train-button")
    fill(page, "knob-name", "my-own-run")
    bomb = tmp_path / "einstellungen.yaml"
    bomb.write_text("a: &x [1, 2]\nb: [*x, *x, *x]\n", encoding="utf-8")  # a YAML bomb's start
    page.set_input_files("#train-load-yaml input[type=file], input[type=file][accept*='.yaml']",
                         str(bomb))
    wait_text(page, "#train-message", "❌")
    shown = " ".join(page.inner_text("#train-message").split())
    # (the framework's timer may still stand before it for a moment: "0.1s ❌ …")
    assert shown.endswith("❌ " + t("config.msg.yaml_anchor", lang, line=1)), shown
    page.locator("#train-advanced .label-wrap").first.click()
    fill(page, "knob-grpo-epsilon_high", 0.1)  # below the lower clip range (0.2): Start says why
    page.click("#train-start")
    wait_text(page, "#train-message", t("settings.grpo.epsilon_high.label", lang))
    shown = " ".join(page.inner_text("#train-message").split())
    if lang == "de":
        assert "muss mindestens so groß sein wie" in shown, shown
    name = page.locator("#knob-name input, #knob-name textarea").first.input_value()
    assert name == "my-own-run"  # nothing typed was lost
    shot(page, f"numbers-settings-file-{lang}")
    no_framework_error(page, runs_dir, log_start)
