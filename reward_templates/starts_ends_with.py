"""Reward replies that begin or end with the text you choose."""

from __future__ import annotations

from .base import Example, Param, as_text, template


@template(
    name="starts_ends_with",
    title="Starts / ends with",
    description="Gives a reward when the reply begins with your prefix and/or ends with your suffix.",
    category="format",
    params=[
        Param("prefix", "str", "", "Text the reply should start with (leave empty to skip)."),
        Param("suffix", "str", "", "Text the reply should end with (leave empty to skip)."),
        Param("ignore_case", "bool", False, "Treat upper and lower case letters as the same."),
        Param("strip", "bool", True, "Ignore spaces and blank lines at the start and end of the reply."),
    ],
    examples=[
        Example("Answer: 42", None, 1.0, params={"prefix": "Answer:"}),
        Example("Well... Answer: 42", None, 0.0, params={"prefix": "Answer:"}),
        Example("Answer: 42. Done", None, 0.5, params={"prefix": "Answer:", "suffix": "Done."}),
        Example("  answer: 42. DONE.\n", None, 1.0, params={"prefix": "Answer:", "suffix": "Done.", "ignore_case": True}),
        Example("Anything", None, None),
    ],
)
def starts_ends_with(prompts, completions, answers, *, prefix="", suffix="", ignore_case=False, strip=True):
    checks = [c for c in (prefix, suffix) if c]
    if not checks:
        return [None] * len(completions)  # nothing configured: the term does not apply
    fold = str.lower if ignore_case else (lambda t: t)
    prefix, suffix = fold(prefix), fold(suffix)
    # Only the ends matter, so compare small slices rather than the whole text
    # (with slack, since lower-casing can change a string's length).
    head_len, tail_len = 2 * len(prefix) + 8, 2 * len(suffix) + 8
    scores = []
    for completion in completions:
        text = as_text(completion)
        if strip:
            text = text.strip()
        hits = 0
        if prefix and fold(text[:head_len]).startswith(prefix):
            hits += 1
        if suffix and fold(text[-tail_len:]).endswith(suffix):
            hits += 1
        scores.append(hits / len(checks))
    return scores
