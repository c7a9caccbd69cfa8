"""Penalise words or phrases you do not want to see."""

from __future__ import annotations

from .base import Example, Param, clip, count_phrase, normalize_text, phrase_haystack, template


@template(
    name="banned_words",
    title="Avoid words",
    description="Takes away a little reward every time the reply uses one of your banned words.",
    category="style",
    params=[
        Param("words", "list", [], "Words or short phrases to avoid."),
        Param("penalty_per_word", "float", 0.1, "Penalty for each time a banned word appears.", min=0.0, max=10.0),
        Param("max_penalty", "float", 1.0, "The penalty never goes beyond this.", min=0.0, max=10.0),
        Param("ignore_case", "bool", True, "Treat 'Sorry' and 'sorry' as the same."),
    ],
    examples=[
        Example("Here is the answer.", None, 0.0, params={"words": ["sorry", "as an ai"]}),
        Example("Sorry, as an AI I cannot. Sorry!", None, -0.3, params={"words": ["sorry", "as an ai"]}),
        Example("sorry " * 50, None, -1.0, params={"words": ["sorry"]}),
        Example("I feel sorrowful.", None, 0.0, params={"words": ["sorrow"]}),
    ],
)
def banned_words(prompts, completions, answers, *, words=(), penalty_per_word=0.1, max_penalty=1.0, ignore_case=True):
    banned = [w for w in (normalize_text(w, lowercase=ignore_case) for w in words) if w]
    if not banned:
        return [0.0] * len(completions)
    scores = []
    for completion in completions:
        haystack = phrase_haystack(normalize_text(clip(completion), lowercase=ignore_case))
        count = sum(count_phrase(haystack, w) for w in banned)
        scores.append(0.0 - min(max_penalty, count * penalty_per_word))
    return scores
