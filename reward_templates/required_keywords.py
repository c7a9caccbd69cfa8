"""Reward replies that use the words or phrases you ask for."""

from __future__ import annotations

from .base import Example, Param, clip, count_phrase, normalize_text, phrase_haystack, template


@template(
    name="required_keywords",
    title="Must mention",
    description="Gives a reward for each of your keywords that appears in the reply, as a fraction of all of them.",
    category="style",
    params=[
        Param("keywords", "list", [], "Words or short phrases the reply should contain."),
        Param("ignore_case", "bool", True, "Treat 'Python' and 'python' as the same."),
        Param("whole_words", "bool", True, "Match whole words only, so 'cat' is not found in 'category'."),
    ],
    examples=[
        Example(
            "Photosynthesis turns light, water and CO2 into sugar.",
            None,
            1.0,
            params={"keywords": ["light", "water", "sugar"]},
        ),
        Example("Plants use sunlight.", None, 0.0, params={"keywords": ["light"]}),
        Example("Plants use sunlight.", None, 1.0, params={"keywords": ["light"], "whole_words": False}),
        Example("First, mix. For example, stir.", None, 0.5, params={"keywords": ["for example", "finally"]}),
        Example("Anything at all.", None, None),
    ],
)
def required_keywords(prompts, completions, answers, *, keywords=(), ignore_case=True, whole_words=True):
    if not keywords:
        return [None] * len(completions)  # nothing asked for: the term does not apply
    if whole_words:
        wanted = [normalize_text(k, lowercase=ignore_case) for k in keywords]
    else:
        wanted = [k.lower() if ignore_case else k for k in keywords]
    scores = []
    for completion in completions:
        if whole_words:
            haystack = phrase_haystack(normalize_text(completion, lowercase=ignore_case))
            hits = sum(1 for w in wanted if count_phrase(haystack, w) > 0)
        else:
            text = clip(completion)
            if ignore_case:
                text = text.lower()
            hits = sum(1 for w in wanted if w and w in text)
        scores.append(hits / len(wanted))
    return scores
