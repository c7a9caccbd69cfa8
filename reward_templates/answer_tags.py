"""Reward the <think>...</think><answer>...</answer> output layout."""

from __future__ import annotations

from .base import Example, Param, check_tag_names, tag_params, clip, template


def strict_layout(text: str, reasoning_tag: str, answer_tag: str) -> bool:
    """The whole text is exactly <r>...</r> <a>...</a>, each tag once, only whitespace around."""
    open_r, close_r = f"<{reasoning_tag}>", f"</{reasoning_tag}>"
    open_a, close_a = f"<{answer_tag}>", f"</{answer_tag}>"
    s = text.strip()
    if not (s.startswith(open_r) and s.endswith(close_a)):
        return False
    if any(s.count(tag) != 1 for tag in (open_r, close_r, open_a, close_a)):
        return False
    end_r = s.find(close_r)
    start_a = s.find(open_a)
    return end_r < start_a and not s[end_r + len(close_r) : start_a].strip()


def soft_layout(text: str, reasoning_tag: str, answer_tag: str) -> bool:
    """The four tags appear in order somewhere in the text."""
    pos = 0
    for tag in (f"<{reasoning_tag}>", f"</{reasoning_tag}>", f"<{answer_tag}>", f"</{answer_tag}>"):
        found = text.find(tag, pos)
        if found < 0:
            return False
        pos = found + len(tag)
    return True


@template(
    name="answer_tags",
    title="Think, then answer",
    description="Gives a reward when the reply puts its reasoning in think tags followed by the answer in answer tags.",
    category="format",
    check=check_tag_names("reasoning_tag", "answer_tag"),
    params=[
        *tag_params(),
        Param(
            "mode",
            "choice",
            "strict",
            "`strict`: the reply must be only the two tagged parts; `soft`: the tags just have to appear in order.",
            choices=["strict", "soft"],
        ),
    ],
    examples=[
        Example("<think>2 + 2 = 4</think>\n<answer>4</answer>", None, 1.0),
        Example("Sure! <think>2 + 2 = 4</think><answer>4</answer>", None, 0.0),
        Example("Sure! <think>2 + 2 = 4</think><answer>4</answer>", None, 1.0, params={"mode": "soft"}),
        Example("<answer>4</answer><think>2 + 2 = 4</think>", None, 0.0, params={"mode": "soft"}),
        Example(
            "<reasoning>2 + 2 = 4</reasoning><answer>4</answer>",
            None,
            1.0,
            params={"reasoning_tag": "reasoning"},
        ),
    ],
)
def answer_tags(prompts, completions, answers, *, reasoning_tag="think", answer_tag="answer", mode="strict"):
    check = strict_layout if mode == "strict" else soft_layout
    return [1.0 if check(clip(c), reasoning_tag, answer_tag) else 0.0 for c in completions]
