"""Lists of choices read whole, in a real browser at the test window's 1400 px, in English and
German: every choice of every setting fits the box that shows it once chosen (a box cut "dapo:
average over all tokens of a step" after "ste"). Screenshots go to test-artifacts/browser/."""
import pytest

from studio.form import field_of, kind_of, section_paths
from studio.i18n import t

from .conftest import open_studio, shot

SECTIONS = {"model": "model", "grpo": "train", "train": "train", "generation": "train"}

# the text of a choice against the room its box gives it: the box's input, less its padding,
# measured in the input's own font
ROOM = """([id, texts]) => {
  const input = document.querySelector('#' + id + ' input');
  if (!input || input.offsetParent === null) return null;
  const style = getComputedStyle(input);
  const ctx = document.createElement('canvas').getContext('2d');
  ctx.font = style.font;
  const room = input.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  return texts.filter(s => ctx.measureText(s).width > room + 1)
              .map(s => s + ' (' + Math.round(ctx.measureText(s).width) + ' > ' + Math.round(room) + ')');
}"""


@pytest.fixture(params=["en-US", "de-DE"])
def locale(request):
    return request.param


def choices_by_step(lang: str) -> dict[str, dict[str, list[str]]]:
    """step -> {element id -> every choice's text}, for each setting that is a list."""
    out: dict[str, dict[str, list[str]]] = {}
    for section, step in SECTIONS.items():
        for path in section_paths(section):
            if kind_of(path) == "choice" and path != "train.processes":
                texts = [t(f"settings.{path}.choice.{c}", lang)
                         for c in field_of(path).metadata["choices"]]
                out.setdefault(step, {})["knob-" + path.replace(".", "-")] = texts
    return out


def test_every_choice_of_every_setting_reads_whole(studio, page):
    url, _ = studio
    open_studio(page, url)
    lang = page.evaluate("document.documentElement.lang")
    cut, seen = {}, 0
    for step, boxes in choices_by_step(lang).items():
        page.click(f"#tab-{step}-button")
        page.wait_for_timeout(300)
        closed = page.locator(f"#tab-{step} .label-wrap:not(.open):visible")
        for _ in range(5):  # the advanced settings, and the model's further settings
            if closed.count() == 0:
                break
            closed.first.click()
            page.wait_for_timeout(300)
        for elem, texts in boxes.items():
            over = page.evaluate(ROOM, [elem, texts])
            if over is None:
                continue  # not on this page (a setting shown only where it applies)
            seen += 1
            if over:
                cut[elem] = over
        shot(page, f"layout-{step}-{lang}")
    assert seen >= 5, seen
    assert cut == {}, cut


def test_no_table_shows_numbered_headers_before_it_has_rows(studio, page):
    """An empty table showed the framework's headers "1 2 3" above no rows: a table with
    nothing to show is hidden, and one with rows names its columns in the page's language."""
    url, _ = studio
    open_studio(page, url)
    numbered = {}
    for step in ("model", "data", "rewards", "train", "export"):
        page.click(f"#tab-{step}-button")
        page.wait_for_timeout(1500)
        heads = page.evaluate("""() => Array.from(document.querySelectorAll(
                '[role=columnheader]')).filter(h => h.offsetParent !== null)
            .map(h => h.innerText.trim()).filter(s => /^\\d+$/.test(s))""")
        if heads:
            numbered[step] = heads
        shot(page, f"layout-empty-{step}")
    assert numbered == {}, numbered
