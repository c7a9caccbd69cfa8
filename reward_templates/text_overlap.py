"""Reward word overlap with the reference: token F1 (as in SQuAD) or ROUGE-L."""

from __future__ import annotations

from collections import Counter

from .base import (
    Example,
    Param,
    answer_text,
    compare_tag_param,
    normalize_text,
    optional_tag_name,
    reference_text,
    template,
)

#: Words compared at most per side; keeps ROUGE-L bounded on huge replies.
MAX_WORDS = 3_000


def tokens(text: str) -> list[str]:
    """Lower-case words without punctuation or articles, as in the SQuAD evaluation."""
    return normalize_text(text, articles=True).split()[:MAX_WORDS]


def token_f1(got: list[str], ref: list[str]) -> float:
    """Harmonic mean of precision and recall over shared words (with repeats)."""
    if not got or not ref:
        return 1.0 if got == ref else 0.0
    common = sum((Counter(got) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö 2004).

    Each word of ``b`` costs a few big-integer operations over ``len(a)``
    bits, instead of a row of a ``len(a) x len(b)`` table.
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, word in enumerate(a):
        masks[word] = masks.get(word, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for word in b:
        u = v & masks.get(word, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(got: list[str], ref: list[str]) -> float:
    """ROUGE-L F1: precision and recall of the longest common word subsequence."""
    if not got or not ref:
        return 1.0 if got == ref else 0.0
    lcs = lcs_length(ref, got)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(got), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


_METRICS = {"token_f1": token_f1, "rouge_l": rouge_l}



@template(
    name="text_overlap",
    title="Word overlap with the reference",
    description="Gives partial reward for the share of the reference's words the reply uses, as token F1 or ROUGE-L.",
    category="correctness",
    needs_answer=True,
    check=optional_tag_name,
    params=[
        Param(
            "metric",
            "choice",
            "token_f1",
            "`token_f1`: shared words in any order (as in SQuAD); `rouge_l`: shared words in the same order.",
            choices=["token_f1", "rouge_l"],
        ),
        compare_tag_param(),
    ],
    examples=[
        Example("<answer>The Eiffel Tower</answer>", "Eiffel Tower", 1.0),
        Example("the tower of Eiffel", "Eiffel Tower", 0.8),
        Example("the tower of Eiffel", "Eiffel Tower", 0.4, params={"metric": "rouge_l"}),
        Example("Big Ben", "Eiffel Tower", 0.0),
        Example("Anything", None, None),
    ],
)
def text_overlap(prompts, completions, answers, *, metric="token_f1", answer_tag="answer"):
    score = _METRICS[metric]
    scores = []
    for completion, answer in zip(completions, answers):
        ref = reference_text(answer)
        if ref is None:
            scores.append(None)
            continue
        got = answer_text(completion, answer_tag)
        scores.append(score(tokens(got), tokens(ref)))
    return scores
