"""Reward replies written in the alphabet (script) you choose."""

from __future__ import annotations

import regex

from .base import Example, Param, answer_text, clip, optional_tag_name, template

# Choice shown to users -> Unicode scripts that count. Japanese mixes kanji
# (Han) with the two kana syllabaries.
SCRIPTS = {
    "Latin": ["Latin"],
    "Cyrillic": ["Cyrillic"],
    "Greek": ["Greek"],
    "Arabic": ["Arabic"],
    "Hebrew": ["Hebrew"],
    "Han (Chinese)": ["Han"],
    "Japanese": ["Han", "Hiragana", "Katakana"],
    "Hangul (Korean)": ["Hangul"],
    "Devanagari": ["Devanagari"],
    "Bengali": ["Bengali"],
    "Tamil": ["Tamil"],
    "Thai": ["Thai"],
    "Armenian": ["Armenian"],
    "Georgian": ["Georgian"],
    "Ethiopic": ["Ethiopic"],
}
_LETTERS_RE = regex.compile(r"\p{L}+")
_SCRIPT_RE = {
    name: regex.compile("(?V1)[\\p{L}&&[" + "".join(f"\\p{{Script={s}}}" for s in scripts) + "]]+")
    for name, scripts in SCRIPTS.items()
}


def script_share(text: str, script: str) -> float | None:
    """Share of the letters of ``text`` that belong to ``script``; None if it has no letters."""
    text = clip(text)
    letters = sum(map(len, _LETTERS_RE.findall(text)))
    if not letters:
        return None
    return sum(map(len, _SCRIPT_RE[script].findall(text))) / letters



@template(
    name="writing_script",
    title="Written in a chosen alphabet",
    description="Gives a reward when the letters of the reply are in the alphabet you choose, such as Latin, Cyrillic or Han.",
    category="style",
    check=optional_tag_name,
    params=[
        Param("script", "choice", "Latin", "The alphabet the reply should be written in.", choices=list(SCRIPTS)),
        Param(
            "min_share",
            "float",
            0.9,
            "Share of letters that must be in that alphabet for the full reward; below it the reward shrinks in step.",
            min=0.01,
            max=1.0,
        ),
        Param("answer_tag", "str", "", "Check only the text inside this tag when the reply has it; empty checks the whole reply."),
    ],
    examples=[
        Example("Москва — столица России.", None, 1.0, params={"script": "Cyrillic"}),
        Example("Moscow is the capital of Russia.", None, 0.0, params={"script": "Cyrillic"}),
        Example("東京は日本の首都です。", None, 1.0, params={"script": "Japanese"}),
        Example("Paris est la capitale de la France.", None, 1.0),
        Example("abcde абвгд", None, 0.5, params={"min_share": 1.0}),
        Example("12 + 30 = 42", None, 0.0),
    ],
)
def writing_script(prompts, completions, answers, *, script="Latin", min_share=0.9, answer_tag=""):
    scores = []
    for completion in completions:
        share = script_share(answer_text(completion, answer_tag), script)
        scores.append(0.0 if share is None else min(1.0, share / min_share))
    return scores
