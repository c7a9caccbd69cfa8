"""Reward replies written in the language you choose (English, French, Chinese, ...)."""

from __future__ import annotations

from functools import lru_cache

import regex

from .base import Example, Param, RewardError, answer_text, clip, optional_tag_name, template

# Choice shown to users -> ISO 639-1 code of the language identifier. The identifier only
# chooses among these, which keeps it from confusing a language with a rare close relative.
LANGUAGES = {
    "English": "en", "French": "fr", "German": "de", "Spanish": "es", "Portuguese": "pt",
    "Italian": "it", "Dutch": "nl", "Swedish": "sv", "Polish": "pl", "Czech": "cs",
    "Russian": "ru", "Ukrainian": "uk", "Greek": "el", "Turkish": "tr", "Arabic": "ar",
    "Hebrew": "he", "Persian": "fa", "Hindi": "hi", "Bengali": "bn", "Chinese": "zh",
    "Japanese": "ja", "Korean": "ko", "Vietnamese": "vi", "Indonesian": "id", "Thai": "th",
}
_LETTERS_RE = regex.compile(r"\p{L}")
# Identification looks at the first part of the text; more adds time, not accuracy.
_MAX_CHARS = 2000


@lru_cache(maxsize=1)
def identifier():
    """The offline language identifier (py3langid, model inside the package), loaded once."""
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
    except ImportError as exc:
        raise RewardError("The language reward needs the py3langid package: "
                          "pip install py3langid==0.4.0") from exc
    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    ident.set_languages(sorted(set(LANGUAGES.values())))
    return ident


def detect_language(text: str) -> str | None:
    """The likeliest of LANGUAGES for text (its code), or None for text with too few letters."""
    text = clip(text, _MAX_CHARS)
    if len(_LETTERS_RE.findall(text)) < 3:
        return None
    code, _prob = identifier().classify(text)
    return code


def _check(params: dict) -> dict:
    identifier()  # a missing package is reported when the set is built, not mid-run
    return optional_tag_name(params)


@template(
    name="answer_language",
    title="Answers in a chosen language",
    description="Gives a reward when the reply is written in the language you choose, such as English, French or Chinese.",
    category="style",
    check=_check,
    params=[
        Param("language", "choice", "English", "The language the reply should be written in.",
              choices=list(LANGUAGES)),
        Param("answer_tag", "str", "", "Check only the text inside this tag when the reply has it; empty checks the whole reply."),
    ],
    examples=[
        Example("La capitale de la France est Paris.", None, 1.0, params={"language": "French"}),
        Example("The capital of France is Paris.", None, 0.0, params={"language": "French"}),
        Example("Die Hauptstadt von Deutschland ist Berlin.", None, 1.0, params={"language": "German"}),
        Example("The capital of Germany is Berlin.", None, 1.0),
        Example("42", None, None),
    ],
)
def answer_language(prompts, completions, answers, *, language="English", answer_tag=""):
    want = LANGUAGES[language]
    scores = []
    for completion in completions:
        found = detect_language(answer_text(completion, answer_tag))
        scores.append(None if found is None else float(found == want))
    return scores
