"""Reward picking the right letter in a multiple-choice question."""

from __future__ import annotations

import re

from .base import Example, Param, RewardError, check_tag_names, clip, extract_boxed, extract_tag, short_repr, template

# Accepted ways of stating the chosen letter, from most to least explicit:
#   "Answer: (B)", "the correct answer is b", "final answer: **B**", "option C",
#   \boxed{B}, and a reply (or answer tag) that is only "B", "(B)", "B." or "B) text".
# A letter counts only when it stands alone: not followed by another letter
# or digit. Lower-case letters count only when wrapped "(b)" or followed by
# punctuation or the end, so "the answer is a number" does not pick "a".
_PHRASE_RE = re.compile(
    r"(?:answer|option|choice)\s*(?:(?:is|would\s+be|should\s+be|must\s+be)\b\s*)?(?:[:=]\s*)?"
    r"(?:(?:option|choice|letter)\s+)?(?:(\*\*|__|[(\[{])\s*)?([A-Za-z])(?![A-Za-z0-9])"
    r"(\s*[)\]}]|\*\*|__|[.,;:!?]|\s*\Z)?",
    re.IGNORECASE,
)
_ALONE_RE = re.compile(r"(?:\*\*|__)?\s*(?:([(\[])\s*)?([A-Za-z])(?:\s*([)\]]|[.:](?!\w)|\*\*|__))?")
_LETTER_RANGE_RE = re.compile(r"[A-Z]-[A-Z]\Z")


def _last_phrase(text: str, allowed: str) -> str | None:
    """The letter of the last "answer is X"-style phrase, or None."""
    found = None
    for m in _PHRASE_RE.finditer(text):
        opening, letter, closing = m.groups()
        if letter.islower() and opening is None and closing is None:
            continue  # "the answer is a number"
        if letter.upper() in allowed:
            found = letter.upper()
    return found


def _alone(text: str, allowed: str) -> str | None:
    """The letter when the text is just a choice: "B", "(b)", "B." or "B) Paris"."""
    stripped = text.strip()
    m = _ALONE_RE.match(stripped)
    if not m:
        return None
    opening, letter, closing = m.groups()
    if m.end() < len(stripped) and not closing:
        return None  # "A good question", "Ab"
    return letter.upper() if letter.upper() in allowed else None


def find_choice(text: str, allowed: str = "ABCDEFGHIJ", tag: str = "answer") -> str | None:
    """The letter a reply picks (upper case), or None if it picks none."""
    text = clip(text)
    for part in (extract_tag(text, tag) if tag else None, extract_boxed(text)):
        if part is not None:
            found = _alone(part, allowed) or _last_phrase(part, allowed)
            if found:
                return found
    return _last_phrase(text, allowed) or _alone(text, allowed)


def reference_letter(answer: str | None, allowed: str = "ABCDEFGHIJ") -> str | None:
    """The option letter of a reference answer ("B", "(b)", "B) Paris", "Answer: B"), or None."""
    if answer is None:
        return None
    short = clip(answer, 400)
    return _alone(short, allowed) or _last_phrase(short, allowed)


def _check(params: dict) -> dict:
    params = check_tag_names("answer_tag")(params)
    raw = params["letters"].strip().upper().replace(" ", "").replace(",", "")
    if _LETTER_RANGE_RE.match(raw) and raw[0] <= raw[2]:
        raw = "".join(chr(c) for c in range(ord(raw[0]), ord(raw[2]) + 1))
    if not raw or not raw.isascii() or not raw.isalpha():
        raise RewardError(
            f"Setting 'letters' must list the option letters, like ABCD or A-E (got {short_repr(params['letters'])})."
        )
    params["letters"] = "".join(dict.fromkeys(raw))
    return params


@template(
    name="multiple_choice",
    title="Right option letter",
    description="Gives a reward when the reply picks the same option letter as the reference, as in 'Answer: (B)'.",
    category="correctness",
    needs_answer=True,
    check=_check,
    params=[
        Param("letters", "str", "A-J", "The option letters in use, like ABCD or A-E."),
        Param("answer_tag", "str", "answer", "If the reply has this tag, the letter is read from inside it first."),
        Param("wrong_score", "float", 0.0, "Score for a wrong letter.", min=-10.0, max=10.0),
        Param("no_letter_score", "float", 0.0, "Score when no letter can be found in the reply.", min=-10.0, max=10.0),
    ],
    examples=[
        Example("Answer: (B)", "B", 1.0),
        Example("Paris is on the Seine, so the answer is b.", "B) Paris", 1.0),
        Example("<think>Not A.</think><answer>C</answer>", "C", 1.0),
        Example("B. Because it is the capital.", "B", 1.0),
        Example("The answer is A.", "B", 0.0),
        Example("I am not sure.", "B", -0.5, params={"no_letter_score": -0.5}),
        Example("Answer: F", "D", 0.0, params={"letters": "ABCD"}),
        Example("Answer: B", None, None),
    ],
)
def multiple_choice(prompts, completions, answers, *, letters="A-J", answer_tag="answer", wrong_score=0.0, no_letter_score=0.0):
    if "-" in letters:  # called directly with the unexpanded default
        letters = _check({"letters": letters, "answer_tag": answer_tag or "answer"})["letters"]
    scores = []
    for completion, answer in zip(completions, answers):
        ref = reference_letter(answer, letters)
        if ref is None:
            scores.append(None)
            continue
        got = find_choice(completion, letters, answer_tag)
        if got is None:
            scores.append(no_letter_score)
        else:
            scores.append(1.0 if got == ref else wrong_score)
    return scores
