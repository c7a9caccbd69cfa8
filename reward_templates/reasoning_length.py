"""Reward a reasonable amount of step-by-step reasoning inside the reasoning tag."""

from __future__ import annotations

from .base import Example, Param, RewardError, check_tag_names, clip, template


def reasoning_text(text: str, tag: str) -> str | None:
    """Text inside the first <tag>...</tag>, or None if there is no closing tag.

    Some chat templates put the opening tag in the prompt, so the completion
    starts mid-reasoning: a closing tag without an opening one counts, and
    everything before it is the reasoning.
    """
    open_t, close_t = f"<{tag}>", f"</{tag}>"
    end = text.find(close_t)
    if end < 0:
        return None
    start = text.rfind(open_t, 0, end)
    return text[start + len(open_t) : end] if start >= 0 else text[:end]


def _check(params: dict) -> dict:
    params = check_tag_names("reasoning_tag")(params)
    if params["min_words"] > params["max_words"]:
        raise RewardError(
            f"Setting 'min_words' ({params['min_words']}) must not be larger than 'max_words' ({params['max_words']})."
        )
    return params


@template(
    name="reasoning_length",
    title="Shows its work",
    description="Gives a reward when the reasoning inside the think tags is neither too short nor far too long.",
    category="reasoning",
    check=_check,
    params=[
        Param("reasoning_tag", "str", "think", "Tag that holds the reasoning, as in `<think>...</think>`."),
        Param("min_words", "int", 20, "Reasoning shorter than this gets partial reward.", min=0, max=100_000),
        Param(
            "max_words",
            "int",
            300,
            "Reasoning longer than this slowly loses reward, down to half at twice this length.",
            min=1,
            max=100_000,
        ),
    ],
    examples=[
        Example("<think>" + "step " * 40 + "</think><answer>4</answer>", None, 1.0),
        Example("<think>" + "step " * 10 + "</think><answer>4</answer>", None, 0.5),
        Example("<think>" + "step " * 600 + "</think><answer>4</answer>", None, 0.5),
        Example("step " * 40 + "</think><answer>4</answer>", None, 1.0),
        Example("No tags, just the answer 4.", None, 0.0),
        Example("<think></think><answer>4</answer>", None, 1.0, params={"min_words": 0}),
    ],
)
def reasoning_length(prompts, completions, answers, *, reasoning_tag="think", min_words=20, max_words=300):
    scores = []
    for completion in completions:
        inner = reasoning_text(clip(completion), reasoning_tag)
        if inner is None:
            scores.append(0.0)
            continue
        words = len(inner.split())
        if words < min_words:
            scores.append(words / min_words)  # partial credit grows with effort
        elif words <= max_words:
            scores.append(1.0)
        else:
            # A gentle slope: long reasoning is discouraged but never scores
            # below half, so it stays better than no reasoning at all.
            over = (words - max_words) / max_words
            scores.append(max(0.5, 1.0 - 0.5 * over))
    return scores
