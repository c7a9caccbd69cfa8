"""Every reward template speaks English and German: its title, description, category, the
label and help of each setting, and the ready-made sets' descriptions (studio/locales/parts/
studio/locales/*.json). The English texts are the templates' own, so the two never drift apart."""
from __future__ import annotations

import re

import pytest

from reward_templates import DEFAULT_SET_DESCRIPTIONS, list_templates
from reward_templates.base import CATEGORIES
from studio import i18n
from studio.i18n import speaking
from studio.step_rewards import gallery_markdown, propose, template_details

SPECS = list_templates()
LANGS = list(i18n.LANGUAGES)


def text(key: str, lang: str) -> str:
    value = i18n.catalog(lang).get(key)
    assert value and value.strip(), f"no {lang} text for {key}"
    return value


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
@pytest.mark.parametrize("lang", LANGS)
def test_every_template_has_its_texts(spec, lang):
    key = f"reward.{spec.name}"
    title = text(f"{key}.title", lang)
    text(f"{key}.description", lang)
    # the dropdown's choice: the title and, so that anyone can find it, the name
    assert text(f"{key}.choice", lang) == f"{title} ({spec.name})"
    for p in spec.params:
        text(f"{key}.param.{p.name}.label", lang)
        text(f"{key}.param.{p.name}.help", lang)
        for c in p.choices or []:  # the form's dropdown shows each choice in words
            text(f"{key}.param.{p.name}.choice.{c}", lang)
    text(f"reward.category.{spec.category}", lang)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_the_english_texts_are_the_templates_own(spec):
    en = i18n.catalog("en")
    key = f"reward.{spec.name}"
    assert en[f"{key}.title"] == spec.title
    assert en[f"{key}.description"] == spec.description
    for p in spec.params:
        assert en[f"{key}.param.{p.name}.help"] == p.help


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_the_german_texts_are_german(spec):
    en, de = i18n.catalog("en"), i18n.catalog("de")
    key = f"reward.{spec.name}"
    assert de[f"{key}.title"] != en[f"{key}.title"]
    assert de[f"{key}.description"] != en[f"{key}.description"]
    for p in spec.params:
        assert de[f"{key}.param.{p.name}.help"] != en[f"{key}.param.{p.name}.help"]


def test_no_tag_is_lost_to_markdown():
    """A tag like <think> outside code font vanishes on the page: it must be in backticks."""
    for lang in LANGS:
        for key, value in i18n.catalog(lang).items():
            if key.startswith(("reward.", "rewards.")):
                bare = re.sub(r"`[^`]*`", "", value)
                assert not re.search(r"</?[A-Za-z][\w-]*>", bare), (lang, key, value)


@pytest.mark.parametrize("lang", LANGS)
def test_categories_and_ready_made_sets(lang):
    for cat in CATEGORIES:
        text(f"reward.category.{cat}", lang)
    for name, description in DEFAULT_SET_DESCRIPTIONS.items():
        assert text(f"reward.set.{name}", "en") == description
        text(f"reward.set.{name}", lang)


@pytest.mark.parametrize("lang", LANGS)
def test_gallery_and_details_in_the_page_language(lang):
    with speaking(lang):
        gallery = gallery_markdown()
        details, defaults = template_details("numeric_match")
        _, note = propose([{"question": "1+1?", "answer": "2"}] * 3)
    for spec in SPECS:
        assert text(f"reward.{spec.name}.title", lang) in gallery
    for cat in CATEGORIES:
        heading = f"#### {text(f'reward.category.{cat}', lang)}"
        # a heading on its own line, after a blank one: it never runs into the list above it
        assert re.search(rf"(\A|\n\n){re.escape(heading)}\n", gallery), heading
    assert text("reward.numeric_match.param.tolerance.label", lang) in details
    assert text("reward.numeric_match.param.tolerance.help", lang) in details
    assert '"tolerance"' in defaults
    assert text("reward.set.math", lang) in note


def test_the_form_checks_each_change_in_the_page_language():
    from reward_templates import RewardError
    from studio.step_rewards import add_reward, set_param, set_weight

    rs = add_reward([], "length_target", 1.0, "{}")
    assert set_weight(rs, 0, 0.5)[0]["weight"] == 0.5
    assert set_param(rs, 0, "target", 30)[0]["params"]["target"] == 30
    assert set_param(rs, 0, "unit", "characters")[0]["params"]["unit"] == "characters"
    assert rs[0]["params"] == {}  # the list given is left as it was
    with speaking("de"), pytest.raises(RewardError, match="ganze Zahl.*0 bis 100000"):
        set_param(rs, 0, "target", 2.5)
    with speaking("en"), pytest.raises(RewardError, match="must be a number"):
        set_weight(rs, 0, None)
    with pytest.raises(RewardError):
        set_param(rs, 0, "unit", "lines")  # not one of its choices


def test_the_set_in_one_line():
    from studio.step_rewards import summary

    rs = [{"template": "numeric_match", "weight": 1.0},
          {"template": "tag_partial_credit", "weight": 0.25},
          {"template": "repetition_penalty", "weight": -0.5}]
    with speaking("en"):
        line = summary(rs)
    assert "1 × Right number + 0.25 × Tag checklist − 0.5 × " in line
    with speaking("de"):
        assert summary(rs).startswith("**Punktzahl einer Antwort:** 1 × Richtige Zahl")
    assert summary([]) == ""
