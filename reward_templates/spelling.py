"""Penalise misspelled words, checked against an offline word list."""

from __future__ import annotations

import functools
import re

from .base import Example, Param, clip, template

# Dictionaries shipped with pyspellchecker (word-frequency lists, no network).
LANGUAGES = ["en", "es", "fr", "de", "it", "pt", "nl", "ru", "ar", "fa", "lv", "eu"]

# Parts of a reply that are not prose: fenced and inline code, tags, links,
# e-mail addresses and LaTeX commands. They are blanked before checking.
# Every alternative starts at a fixed character or a space, so it stays linear.
_NOT_PROSE_RE = re.compile(
    r"```[^`]*(?:```|\Z)|`[^`\n]*`|<[^<>\n]{0,200}>|https?://\S+|www\.\S+|(?<!\S)[^\s@]+@\S*|\\[A-Za-z]+",
)
# A word: letters only, with inner apostrophes ("don't"). Words glued to
# digits or underscores ("3rd", "x_1") never match, because \b needs a change
# between word and non-word characters.
_WORD_RE = re.compile(r"\b[^\W\d_]+(?:['’][^\W\d_]+)*\b")


@functools.lru_cache(maxsize=4)
def _checker(language: str):
    from spellchecker import SpellChecker

    return SpellChecker(language=language, distance=1)


def misspelled(text: str, language: str = "en", allowed=frozenset(), ignore_capitalized: bool = True) -> list[str]:
    """Every misspelled word of ``text`` in order (repeats included)."""
    prose = _NOT_PROSE_RE.sub(" ", clip(text))
    words = []
    for word in _WORD_RE.findall(prose):
        word = word.replace("’", "'")
        if len(word) < 2 or len(word) > 40:
            continue
        if any(c.isupper() for c in word[1:]):
            continue  # acronyms and camelCase names: "NASA", "iPhone", "getValue"
        if ignore_capitalized and word[0].isupper():
            continue  # names: "Natalia", "Kyiv"
        lower = word.lower()
        if lower not in allowed:
            words.append(lower)
    if not words:
        return []
    unknown = _checker(language).unknown(set(words))
    return [w for w in words if w in unknown]


@template(
    name="spelling",
    title="Spelling",
    description="Takes away a little reward for every misspelled word, ignoring code, numbers, tags and names.",
    category="style",
    params=[
        Param("penalty_per_word", "float", 0.1, "Penalty for each misspelled word.", min=0.0, max=10.0),
        Param("max_penalty", "float", 1.0, "The penalty never goes beyond this.", min=0.0, max=10.0),
        Param("language", "choice", "en", "Language of the word list.", choices=LANGUAGES),
        Param("allowed_words", "list", [], "Extra words to accept, such as jargon or product names."),
        Param("ignore_capitalized", "bool", True, "Skip words that start with a capital letter, which are often names."),
    ],
    examples=[
        Example("The quick brown fox jumps over the lazy dog.", None, 0.0),
        Example("I recieve teh letter tommorow.", None, -0.3),
        Example("Run `pip instal foo` and read <thnk>.", None, 0.0),
        Example("The gpu is fast.", None, 0.0, params={"allowed_words": ["gpu"]}),
        Example("wrod " * 30, None, -1.0),
    ],
)
def spelling(prompts, completions, answers, *, penalty_per_word=0.1, max_penalty=1.0, language="en", allowed_words=(), ignore_capitalized=True):
    allowed = frozenset(w.lower() for w in allowed_words)
    scores = []
    for completion in completions:
        count = len(misspelled(completion, language, allowed, ignore_capitalized))
        scores.append(0.0 - min(max_penalty, count * penalty_per_word))
    return scores
