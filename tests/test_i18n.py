"""English and German: every text the page shows has both (studio/i18n.py, studio/locales/).

The page is built for each mode and every text in its configuration must be a translation
marker whose key has an English and a German text; every key the code asks for by name exists
in both languages, with the same placeholders. (The browser test in tests/browser/ walks the
wizard in German and checks what the browser really shows.)"""
from __future__ import annotations

import ast
import re
import string
from pathlib import Path

import pytest

from studio import i18n
from studio.access import Policy
from studio.app import build_app

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r'^__i18n__\{"__type__": "translation_metadata", "key": "([^"]+)"\}$')
TEXT_PROPS = ("label", "info", "placeholder")
VALUE_TYPES = {"markdown", "html", "button", "uploadbutton", "loginbutton"}
# texts that are the same in every language
SAME_EVERYWHERE = {("radio", "language")}  # the language names, each in its own language


def words(text) -> bool:
    """Whether a text has something to translate (letters, not only symbols or numbers)."""
    if not isinstance(text, str):
        return False
    visible = re.sub(r"<[^>]*>", " ", text)  # markup only (hidden markers) is not a text
    return re.search(r"[^\W\d_]{2,}", visible) is not None


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def page_texts(demo):
    """(component type, elem_id, prop, text) for every text in the page's configuration."""
    for comp in demo.get_config_file()["components"]:
        kind, props = comp["type"], comp["props"]
        where = props.get("elem_id") or comp["id"]
        for prop in TEXT_PROPS:
            if props.get(prop) and (props.get("show_label", True) or prop != "label"):
                yield kind, where, prop, props[prop]
        if kind in VALUE_TYPES:
            yield kind, where, "value", props.get("value")
        for choice in props.get("choices") or []:
            label = choice[0] if isinstance(choice, (list, tuple)) else choice
            yield kind, where, "choice", label


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    root = tmp_path_factory.mktemp("i18n")
    policies = [Policy("local", root / "local"),
                Policy("classroom", root / "class", {}),
                Policy("space", root / "space", admins=("owner",))]
    with pytest.MonkeyPatch.context() as mp:
        # off a Space, Gradio's stand-in login asks the Hub who this machine is: not here
        import gradio.oauth
        mp.setattr(gradio.oauth, "_get_mocked_oauth_info", lambda: {})
        return {p.mode: build_app(p) for p in policies}


def test_both_languages_have_the_same_keys_and_placeholders():
    en, de = i18n.catalog("en"), i18n.catalog("de")
    assert sorted(set(en) - set(de)) == [], "keys with no German text"
    assert sorted(set(de) - set(en)) == [], "German texts of keys nobody uses in English"
    for key in en:
        assert en[key].strip() and de[key].strip(), f"empty text for {key}"
        assert placeholders(en[key]) == placeholders(de[key]), key


@pytest.mark.parametrize("module, prefix, same", [
    ("core.data", "data.msg.", {"size_KB", "size_MB", "size_GB"}),  # units: the same in German
    ("core.config", "config.msg.", {"kind_bool"}),  # true/false, as a settings file says it
])
def test_every_core_message_has_english_and_german_texts(module, prefix, same):
    """Core's data and settings messages: in English word for word as the command line says
    them, in German differently (so that the German walk-through catches any left English)."""
    import importlib

    en, de = i18n.catalog("en"), i18n.catalog("de")
    for msg_id, english in importlib.import_module(module).MESSAGES.items():
        key = prefix + msg_id
        assert en.get(key) == english, key
        assert de.get(key) and (de[key] != english or msg_id in same), key
        assert placeholders(de[key]) == placeholders(english), key


@pytest.mark.parametrize("mode", ["local", "classroom", "space"])
def test_every_text_on_the_page_is_translated(pages, mode):
    untranslated, unknown = [], []
    for kind, where, prop, text in page_texts(pages[mode]):
        if not words(text) or (kind, where) in SAME_EVERYWHERE:
            continue
        m = MARKER.match(str(text))
        if not m:
            untranslated.append(f"{kind} #{where} {prop}: {str(text)[:70]!r}")
        elif not (i18n.catalog("en").get(m.group(1)) and i18n.catalog("de").get(m.group(1))):
            unknown.append(m.group(1))
    assert untranslated == [], "texts on the page with no translation key:\n" + \
        "\n".join(untranslated)
    assert unknown == [], f"keys with no English or German text: {unknown}"


def keys_named_in_code() -> list[tuple[str, str]]:
    """Every literal key passed to t(...) or L(...) in the studio's code."""
    found = []
    for path in sorted((ROOT / "studio").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("t", "L") \
                    and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                found.append((path.name, node.args[0].value))
    return found


def test_every_key_the_code_names_exists():
    named = keys_named_in_code()
    assert len(named) > 20
    missing = [f"{file}: {key}" for file, key in named if key not in i18n.catalog("en")]
    assert missing == []


def test_server_side_texts_follow_the_page_language():
    assert i18n.t("app.tab.model", "de") != i18n.t("app.tab.model", "en")
    with i18n.speaking("de"):
        assert i18n.t("app.signed_in", name="Ada", role="x") == "Angemeldet als **Ada** (x)"
    assert i18n.t("app.signed_in", name="Ada", role="x").startswith("Signed in as")


@pytest.mark.parametrize("cookie, header, lang", [
    ("de", "en-US,en;q=0.9", "de"),          # the page's choice wins over the browser's
    (None, "de-AT,de;q=0.9,en;q=0.5", "de"),
    (None, "fr-FR,fr;q=0.9,en;q=0.8", "en"),  # first of ours by weight
    (None, "en;q=0.3,de;q=0.7", "de"),
    ("xx", None, "en"),                       # a cookie we do not know, no header
])
def test_the_language_of_a_request(cookie, header, lang):
    class Request:
        cookies = {i18n.COOKIE: cookie} if cookie else {}
        headers = {"accept-language": header} if header else {}
    assert i18n.lang_of(Request()) == lang


def test_the_browser_gets_every_language():
    texts = i18n.gradio_i18n().translations_dict
    assert set(texts) == set(i18n.LANGUAGES)
    assert texts["de"]["app.tab.model"] == "1 · Modell"


# ---- what the worker says in English, said again in the page's language -----------------------

def _core_warnings():
    """One warning of each code core.health raises, as the events the trainer writes."""
    from core.health import CollapseDetector

    d = CollapseDetector({"numeric_match": 1.0}, ["numeric_match", "length_target"])
    d.correctness = [0.3]
    yield d._entropy_collapse({"entropy": 0.05}, 0.3)
    d.zero_streak = 4
    yield d._no_signal(None)
    d.correctness = [0.8] * 5 + [0.4] * 5
    d.history.extend([{"rewards/length_target/mean": 0.2}] * 5 +
                     [{"rewards/length_target/mean": 0.6}] * 5)
    yield d._reward_hacking()
    d.peak_window = 0.9
    yield d._correctness_falling()
    d = CollapseDetector({"numeric_match": 1.0}, ["numeric_match", "length_target"])
    d.start_means = {"length_target": 0.2}
    d.correctness = [0.2] * 20
    d.history.extend([{"rewards/length_target/mean": 1.0}] * 5)
    yield d._easy_reward_only()


def test_core_advice_warnings_and_engine_reasons_have_both_languages():
    """The studio says core's English advice, collapse warnings and engine reasons from their
    codes and values: in English word for word as core does, in German differently (so that
    tests/browser/test_languages.py catches any left in English on the German page)."""
    from core.config import RunConfig
    from core.engine_choice import REASONS
    from core.health import settings_advice
    from studio.watch import WARNING_VALUES, advice_texts, engine_why_text, warning_texts

    cfg = RunConfig.from_dict({"rewards": [{"template": "numeric_match"}],
                               "train": {"learning_rate": 5e-3},
                               "grpo": {"temperature": 0.5, "num_generations": 2}})
    advice = settings_advice(cfg) + settings_advice(
        RunConfig.from_dict({"train": {"learning_rate": 7e-4}}))
    assert len(advice) == 4
    events = [dict(a, code="risky_setting") for a in advice] + \
        [w.to_event() for w in _core_warnings()]
    assert {e["code"] for e in events} == {"risky_setting"} | set(WARNING_VALUES)
    for e in events:
        english = (e["message"], e["fix"])
        assert warning_texts(e) == english
        with i18n.speaking("de"):
            german = warning_texts(e)
        assert german[0] != english[0] and german[1] != english[1], e["code"]
    assert advice_texts(advice[0]) == (advice[0]["message"], advice[0]["fix"])
    # an event from before the codes had values keeps core's words
    assert warning_texts({"code": "no_signal", "message": "m", "fix": "f"}) == ("m", "f")

    for code, english in REASONS.items():
        values = {k: v for k, v in {"tokens": 1234, "limit": 4096, "processes": 2}.items()
                  if "{" + k in english}
        assert engine_why_text({"code": code, **values}) == english.format(**values)
        with i18n.speaking("de"):
            assert engine_why_text({"code": code, **values}) != english.format(**values)
    assert engine_why_text(None, "as core said") == "as core said"


def test_every_export_and_evaluation_step_and_failure_has_both_languages():
    """core.export and core.evaluate say their steps and failures as codes; the model process
    shows each in the page's language (export.step.<code>, export.fail.<code>, eval.step.<code>)
    with core's values."""
    import string

    from core.evaluate import EVAL_STEPS
    from core.export import MESSAGES, STEPS

    def fields(text):
        return {name for _, name, _, _ in string.Formatter().parse(text) if name}

    for prefix, table in (("export.step", STEPS), ("export.fail", MESSAGES),
                          ("eval.step", EVAL_STEPS)):
        for code, english in table.items():
            for lang in i18n.LANGUAGES:
                text = i18n.catalog(lang).get(f"{prefix}.{code}")
                assert text, f"{lang}: {prefix}.{code}"
                assert fields(text) <= fields(english), f"{lang}: {prefix}.{code}"


@pytest.mark.parametrize("lang", list(i18n.LANGUAGES))
def test_the_grpo_pictures_are_drawn_in_the_page_language(lang):
    import xml.dom.minidom

    from studio.step_train import grpo_diagram, healthy_curves

    with i18n.speaking(lang):
        for svg in (grpo_diagram(), healthy_curves()):
            xml.dom.minidom.parseString(svg)  # well-formed, whatever the language's characters
        curves = healthy_curves()
    for key in ("reward", "loss.note", "kl"):
        assert i18n.t(f"train.grpo.curves.{key}", lang) in curves


@pytest.mark.parametrize("lang", list(i18n.LANGUAGES))
def test_the_model_process_speaks_the_language_of_the_request(lang):
    import json
    import subprocess
    import sys

    request = {"job": "prepare", "source": "/no-such-model-folder", "lang": lang}
    out = subprocess.run([sys.executable, "-m", "studio.infer"], cwd=ROOT, text=True,
                         input=json.dumps(request), capture_output=True, timeout=120).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert lines[0] == {"progress": i18n.t("chat.progress.finding", lang)}
    assert "error" in lines[-1]  # no such folder: one line, in the end
