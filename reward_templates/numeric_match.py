"""Reward the right final number (math word problems, GSM8K-style datasets)."""

from __future__ import annotations

import re

from .base import (
    Example,
    Param,
    check_tag_names,
    extract_boxed,
    extract_hash_answer,
    extract_tag,
    last_number,
    numbers_equal,
    parse_number,
    reference_text,
    template,
)

SOURCES = ["auto", "answer_tag", "hashes", "boxed", "last_number"]
# LaTeX fractions as models write them inside \boxed{}: \frac{3}{4}, \dfrac{-1}{2}.
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\{\s*(-?\d+)\s*\}\{\s*(\d+)\s*\}")


def _number_in(fragment: str | None) -> float | None:
    """A fragment like "The answer is $42." -> 42: whole fragment first, else its last number."""
    if fragment is None:
        return None
    if "frac" in fragment:
        fragment = _LATEX_FRAC_RE.sub(r"\1/\2", fragment)
    value = parse_number(fragment)
    if value is None:
        value = parse_number(last_number(fragment))
    return value


def completion_number(text: str, source: str = "auto", answer_tag: str = "answer") -> float | None:
    """The number a completion commits to, looked for where ``source`` says."""
    if source in ("auto", "answer_tag"):
        tagged = extract_tag(text, answer_tag)
        if tagged is not None or source == "answer_tag":
            return _number_in(tagged)
    if source in ("auto", "hashes"):
        hashed = extract_hash_answer(text)
        if hashed is not None or source == "hashes":
            return _number_in(hashed)
    if source in ("auto", "boxed"):
        boxed = extract_boxed(text)
        if boxed is not None or source == "boxed":
            return _number_in(boxed)
    return parse_number(last_number(text))


def reference_number(answer: str | None) -> float | None:
    """The reference as a number ("... #### 72" -> 72); None if it is not one number."""
    return parse_number(reference_text(answer))


@template(
    name="numeric_match",
    title="Right number",
    description="Gives a reward when the final number in the answer equals the reference number.",
    category="correctness",
    needs_answer=True,
    check=check_tag_names("answer_tag"),
    params=[
        Param(
            "source",
            "choice",
            "auto",
            "Where to find the model's number: `auto` tries the answer tag, then `#### N`, then `\\boxed{}`, "
            "then the last number in the text.",
            choices=SOURCES,
        ),
        Param("answer_tag", "str", "answer", "Name of the tag that holds the final answer, as in `<answer>42</answer>`."),
        Param("tolerance", "float", 1e-6, "How close counts as equal, relative to the reference (0.01 = within 1%).", min=0.0, max=1.0),
        Param("correct_score", "float", 1.0, "Reward for the right number.", min=0.0, max=10.0),
        Param(
            "partial_credit_for_number",
            "float",
            0.0,
            "Small reward for giving some number even if it is wrong (helps a model that never answers).",
            min=0.0,
            max=1.0,
        ),
    ],
    examples=[
        Example("<think>6 * 7 = 42</think><answer>42</answer>", "42", 1.0, prompt="What is 6 times 7?"),
        Example("Natalia sold 48 + 24 = 72 clips.\n#### 72", "Natalia sold ... #### 72", 1.0),
        Example("So the total is $1,200.", "1200", 1.0),
        Example("The answer is \\boxed{\\frac{3}{4}} or 0.75", "0.75", 1.0),
        Example("I think it is 41.", "42", 0.0),
        Example("I think it is 41.", "42", 0.1, params={"partial_credit_for_number": 0.1}),
        Example("I don't know.", "42", 0.0, params={"partial_credit_for_number": 0.1}),
        Example("3.14", "3.14159", 1.0, params={"tolerance": 0.001}),
        Example("42", "forty-two", None),
    ],
)
def numeric_match(
    prompts,
    completions,
    answers,
    *,
    source="auto",
    answer_tag="answer",
    tolerance=1e-6,
    correct_score=1.0,
    partial_credit_for_number=0.0,
):
    scores = []
    for completion, answer in zip(completions, answers):
        expected = reference_number(answer)
        if expected is None:
            scores.append(None)  # no numeric reference: this term does not apply
            continue
        got = completion_number(completion, source, answer_tag)
        if got is None:
            scores.append(0.0)
        elif numbers_equal(got, expected, tolerance):
            scores.append(float(correct_score))
        else:
            scores.append(float(partial_credit_for_number))
    return scores
