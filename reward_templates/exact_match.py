"""Reward an answer that is exactly the reference, up to case, punctuation and spacing."""

from __future__ import annotations

from .base import (
    Example,
    Param,
    answer_text,
    clip,
    compare_tag_param,
    normalize_text,
    numbers_equal,
    optional_tag_name,
    parse_number,
    reference_text,
    template,
)



@template(
    name="exact_match",
    title="Exact answer",
    description="Gives a reward when the answer is the same as the reference, ignoring case, punctuation and extra spaces.",
    category="correctness",
    needs_answer=True,
    check=optional_tag_name,
    params=[
        compare_tag_param(),
        Param("ignore_case", "bool", True, "Treat 'Paris' and 'paris' as the same."),
        Param("ignore_punctuation", "bool", True, "Ignore commas, full stops, quotes and other punctuation."),
        Param("ignore_articles", "bool", True, "Ignore the words 'a', 'an' and 'the'."),
    ],
    examples=[
        Example("<think>France's capital.</think><answer>Paris.</answer>", "paris", 1.0),
        Example("  The Eiffel Tower ", "eiffel tower", 1.0),
        Example("The Eiffel Tower", "eiffel tower", 0.0, params={"ignore_articles": False}),
        Example("Paris, France", "Paris", 0.0),
        Example("<answer>1,200</answer>", "1200", 1.0),
        Example("Lyon", None, None),
    ],
)
def exact_match(
    prompts,
    completions,
    answers,
    *,
    answer_tag="answer",
    ignore_case=True,
    ignore_punctuation=True,
    ignore_articles=True,
):
    def norm(text: str) -> str:
        return normalize_text(text, lowercase=ignore_case, punctuation=ignore_punctuation, articles=ignore_articles)

    scores = []
    for completion, answer in zip(completions, answers):
        ref = reference_text(answer)
        if ref is None:
            scores.append(None)
            continue
        got = clip(answer_text(completion, answer_tag)).strip()
        # Numbers are compared as numbers, so "1,200" equals "1200".
        ref_num = parse_number(ref)
        if ref_num is not None:
            got_num = parse_number(got)
            if got_num is not None:
                scores.append(1.0 if numbers_equal(got_num, ref_num, 1e-9) else 0.0)
                continue
        scores.append(1.0 if norm(got) == norm(ref) else 0.0)
    return scores
