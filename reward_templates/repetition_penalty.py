"""Penalise replies that repeat the same phrases over and over."""

from __future__ import annotations

from .base import Example, Param, clip, template


def repeated_fraction(text: str, n: int) -> float:
    """Share of word n-grams that are repeats of an earlier n-gram (0 = no repetition)."""
    words = text.lower().split()
    total = len(words) - n + 1
    if total <= 1:
        return 0.0
    unique = len(set(zip(*(words[i:] for i in range(n)))))
    return 1.0 - unique / total


@template(
    name="repetition_penalty",
    title="No repeating",
    description="Takes reward away when the reply repeats the same short phrases again and again.",
    category="style",
    params=[
        Param("n", "int", 3, "Phrase length in words to look for repeats of.", min=1, max=10),
        Param("max_penalty", "float", 1.0, "Penalty for a reply that is nothing but repeats.", min=0.0, max=10.0),
    ],
    examples=[
        Example("The cat sat on the mat while the dog slept by the door.", None, 0.0),
        Example("I am sure. I am sure. I am sure. I am sure.", None, -0.7),
        Example("I am sure. I am sure. I am sure. I am sure.", None, -0.35, params={"max_penalty": 0.5}),
        Example("", None, 0.0),
    ],
)
def repetition_penalty(prompts, completions, answers, *, n=3, max_penalty=1.0):
    # 0.0 - x rather than -x so a clean reply scores 0.0, not -0.0, in previews.
    return [0.0 - max_penalty * repeated_fraction(clip(c), n) for c in completions]
