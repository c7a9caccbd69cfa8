"""Reward a completion that mentions the reference answer somewhere."""

from __future__ import annotations

from .base import (
    Example,
    Param,
    all_numbers,
    clip,
    normalize_text,
    numbers_equal,
    parse_number,
    reference_text,
    template,
)


def _token_values(tokens: list[str]):
    """Values of tokens found by all_numbers (already clean, so float() suffices)."""
    for token in tokens:
        try:
            yield float(token.replace(",", "").replace("−", "-"))
        except ValueError:
            continue


@template(
    name="contains_answer",
    title="Mentions the answer",
    description="Gives a reward when the reference answer appears anywhere in the reply, as whole words.",
    category="correctness",
    needs_answer=True,
    params=[
        Param("ignore_case", "bool", True, "Treat 'Paris' and 'paris' as the same."),
    ],
    examples=[
        Example("I believe the capital is Paris, of course.", "paris", 1.0),
        Example("There were 120 apples.", "12", 0.0),
        Example("That makes 12.", "12", 1.0),
        Example("The total is $1,200 in the end.", "1200", 1.0),
        Example("It is in New York City.", "new york", 1.0),
        Example("It is in newyork.", "new york", 0.0),
        Example("It is paris.", "Paris", 0.0, params={"ignore_case": False}),
    ],
)
def contains_answer(prompts, completions, answers, *, ignore_case=True):
    scores = []
    for completion, answer in zip(completions, answers):
        ref = reference_text(answer)
        if ref is None:
            scores.append(None)
            continue
        ref_num = parse_number(ref)
        if ref_num is not None:
            # Numbers are compared as whole numbers, so "12" does not match
            # "120" but does match "12.0" or "12,".
            found = any(numbers_equal(v, ref_num, 1e-9) for v in _token_values(all_numbers(completion)))
            scores.append(1.0 if found else 0.0)
            continue
        ref_norm = normalize_text(ref, lowercase=ignore_case)
        if not ref_norm:  # reference is only punctuation: compare it raw
            scores.append(1.0 if ref in clip(completion) else 0.0)
            continue
        text_norm = normalize_text(completion, lowercase=ignore_case)
        # Padding with spaces makes the test whole-word: "york" is not in "yorkshire".
        scores.append(1.0 if f" {ref_norm} " in f" {text_norm} " else 0.0)
    return scores
