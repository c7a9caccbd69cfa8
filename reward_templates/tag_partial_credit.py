"""Partial credit for each reasoning/answer tag, so a model learns the layout step by step."""

from __future__ import annotations

from .base import Example, Param, check_tag_names, tag_params, clip, template


@template(
    name="tag_partial_credit",
    title="Tag checklist",
    description="Gives a quarter point for each think and answer tag used exactly once, minus a little for text after the answer.",
    category="format",
    check=check_tag_names("reasoning_tag", "answer_tag"),
    params=[
        *tag_params(),
        Param(
            "penalty_per_char",
            "float",
            0.001,
            "Penalty for each character written after the closing answer tag.",
            min=0.0,
            max=1.0,
        ),
        Param("max_penalty", "float", 0.5, "Largest total penalty for trailing text.", min=0.0, max=1.0),
    ],
    examples=[
        Example("<think>2 + 2 = 4</think><answer>4</answer>", None, 1.0),
        Example("<think>2 + 2 = 4</think> The answer is 4.", None, 0.5),
        Example("<think>2 + 2 = 4</think><answer>4</answer>" + "x" * 100, None, 0.9),
        Example("<think>2 + 2 = 4</think><answer>4</answer>" + "x" * 100, None, 1.0, params={"penalty_per_char": 0}),
        Example("<answer>4</answer>" + "x" * 1000, None, 0.0),
        Example("no tags at all", None, 0.0),
    ],
)
def tag_partial_credit(
    prompts,
    completions,
    answers,
    *,
    reasoning_tag="think",
    answer_tag="answer",
    penalty_per_char=0.001,
    max_penalty=0.5,
):
    tags = (f"<{reasoning_tag}>", f"</{reasoning_tag}>", f"<{answer_tag}>")
    close_a = f"</{answer_tag}>"
    scores = []
    for completion in completions:
        text = clip(completion)
        score = 0.25 * sum(1 for tag in tags if text.count(tag) == 1)
        end = text.rfind(close_a)
        if end >= 0:
            if text.count(close_a) == 1:
                score += 0.25
            # Rambling after the final answer wastes tokens and can contradict it.
            # (Trailing whitespace such as a final newline is harmless.)
            trailing = len(text[end + len(close_a) :].strip())
            score -= min(max_penalty, trailing * penalty_per_char)
        scores.append(score)
    return scores
