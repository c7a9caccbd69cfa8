"""The whole wizard in German, in a real browser set to German, against a real server and
worker; then the switch to English, which keeps the form. No English text of the studio's
catalog may show on the German page (nor German on the English one). Screenshots of every step
in both languages go to test-artifacts/browser/ (de-1-model.png ... en-5-export.png)."""
import re

import pytest

from studio.i18n import catalog

from .conftest import (TINY, answered, ask_run, fill, open_studio, run_state, run_step, shot,
                       wait_loaded, wait_text, wait_until, wait_value)

pytestmark = pytest.mark.model

STEPS = ("model", "data", "rewards", "train", "export")


@pytest.fixture
def locale():
    return "de-DE"


def plain(text: str) -> str:
    """A catalog text as a browser shows it: no Markdown marks, links as their words."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[*`#_]+", "", text)
    return text


def fragments(lang: str, other: str) -> dict[str, str]:
    """Pieces of `lang`'s texts long enough to be recognised (at least 24 characters between
    placeholders and line breaks) that the `other` language does not share, by key."""
    mine, theirs = catalog(lang), catalog(other)
    out = {}
    for key, text in mine.items():
        if text == theirs.get(key):
            continue
        for piece in re.split(r"\{[^}]*\}|\n", plain(text)):
            piece = " ".join(piece.split())
            if len(piece) >= 24 and piece not in plain(theirs.get(key, "")):
                out[piece] = key
    return out


def no_text_of(page, lang: str, other: str) -> None:
    """The page (as the browser renders it) shows no text of `lang` that `other` words
    differently."""
    shown = " ".join(page.inner_text("body").split())
    leaks = {key: piece for piece, key in fragments(lang, other).items() if piece in shown}
    assert leaks == {}, f"{lang} texts on the {other} page: {leaks}"


BUSY_MARKS = """() => {
  window.busyMarks = [];
  const mark = /^(queue|processing|Warteschlange|in Arbeit)\\b/;
  const note = (node) => {
    if (node.nodeType === 3 && mark.test(node.nodeValue)) window.busyMarks.push(node.nodeValue);
    else for (let c = node.firstChild; c; c = c.nextSibling) note(c);
  };
  new MutationObserver((records) => records.forEach((r) => r.type === "characterData"
      ? note(r.target) : r.addedNodes.forEach(note)))
    .observe(document.documentElement, {subtree: true, childList: true, characterData: true});
}"""


def visit(page, step: str) -> None:
    page.click(f"#tab-{step}-button")
    page.wait_for_timeout(500)


def test_the_whole_wizard_in_german_then_english(studio, page, tmp_path):
    de, en = catalog("de"), catalog("en")
    url, runs_dir = studio
    open_studio(page, url)
    assert page.evaluate("document.documentElement.lang") == "de"
    # every busy mark Gradio writes while the wizard works ("queue: 1/1 |", "processing |"),
    # as the page shows it once the page's own script has had its turn
    page.evaluate(BUSY_MARKS)
    tabs = page.locator("button[role=tab]").all_inner_texts()
    assert tabs[:5] == [de[f"app.tab.{s}"] for s in STEPS]

    # 1. model
    wait_text(page, "#model-estimate", "GB")
    no_text_of(page, "en", "de")
    shot(page, "de-1-model")

    # 2. data: a German CSV, its columns recognised by their German names
    csv = tmp_path / "rechnen.csv"
    csv.write_text("Frage,Antwort\n" + "".join(f"Was ist {a} + {b}?,{a + b}\n"
                                               for a in range(1, 4) for b in range(1, 4)),
                   encoding="utf-8")
    visit(page, "data")
    page.set_input_files("#data-upload input[type=file]", str(csv))
    wait_text(page, "#data-preview", "Was ist 1 + 1?")
    wait_value(page, "#data-question input", "Frage")
    wait_value(page, "#data-answer input", "Antwort")
    no_text_of(page, "en", "de")
    shot(page, "de-2-data")

    # 3. rewards: a set is proposed for answers that are numbers
    visit(page, "rewards")
    wait_text(page, "#tab-rewards", "numeric_match", timeout=60)
    wait_text(page, "#reward-list", de["rewards.item.remove"])  # the form speaks German
    no_text_of(page, "en", "de")
    shot(page, "de-3-rewards")

    # 4. train: a tiny run of two steps, watched to the end
    visit(page, "train")
    fill(page, "knob-name", "deutscher-lauf")
    page.click("#train-advanced button, #train-advanced .label-wrap")
    for elem, value in TINY.items():
        fill(page, elem, value)
    fill(page, "knob-train-max_steps", 2)
    page.click("#train-start")
    wait_until(lambda: run_state(page) == "finished" or run_state(page) == "failed", 600,
               "the run to finish")
    assert run_state(page) == "finished", page.inner_text("#train-status")
    assert run_step(page) == 2
    page.wait_for_selector("#chart-0 .scatterlayer .trace path.point", state="attached")
    no_text_of(page, "en", "de")
    shot(page, "de-4-train")

    # 5. try it: the trained adapter answers a German question
    visit(page, "export")
    question = "Was ist 2 + 3?"
    ask_run(page, "deutscher-lauf", question)
    wait_until(lambda: answered(page, "chat-trained", question), 300, "the trained model's answer")
    # written word by word: the status changes when the answers are complete
    wait_until(lambda: "⏳" not in page.inner_text("#chat-status"), 300, "the whole answer")
    no_text_of(page, "en", "de")
    shot(page, "de-5-export")
    assert page.outside_requests == []
    marks = set(page.evaluate("window.busyMarks"))
    assert not {m for m in marks if m.startswith(("queue", "processing"))}, marks
    assert {m for m in marks if m.startswith(("Warteschlange", "in Arbeit"))}, marks

    # the switch: the page comes back in English, with the form as it was
    page.locator("#language label").filter(has_text="English").click()
    page.wait_for_function("document.documentElement.lang === 'en'", timeout=30_000)
    assert wait_loaded(page) == "restored"
    tabs = page.locator("button[role=tab]").all_inner_texts()
    assert tabs[:5] == [en[f"app.tab.{s}"] for s in STEPS]
    visit(page, "data")
    wait_value(page, "#data-question input", "Frage")
    for n, step in enumerate(STEPS, 1):
        visit(page, step)
        if step == "train":
            assert page.locator("#knob-name input, #knob-name textarea").first.input_value() \
                == "deutscher-lauf"
        no_text_of(page, "de", "en")
        shot(page, f"en-{n}-{step}")
