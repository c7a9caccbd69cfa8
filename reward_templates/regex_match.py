"""Reward replies that match a pattern you write (a regular expression)."""

from __future__ import annotations

from .base import Example, Param, as_text, compile_user_regex, template, user_regex_matches


def _check(params: dict) -> dict:
    # Compile now so a typo is reported when the reward is set up, not mid-training.
    compile_user_regex(params["pattern"], params["ignore_case"], params["multiline"])
    return params


@template(
    name="regex_match",
    title="Matches a pattern",
    description="Gives a reward when the reply matches a pattern you write as a regular expression.",
    category="format",
    check=_check,
    params=[
        Param("pattern", "str", r"\d", "The regular expression to look for, e.g. `^Answer: \\d+$`."),
        Param(
            "mode",
            "choice",
            "search",
            "`search`: the pattern may match anywhere; `fullmatch`: it must match the whole reply.",
            choices=["search", "fullmatch"],
        ),
        Param("ignore_case", "bool", False, "Treat upper and lower case letters as the same."),
        Param("multiline", "bool", True, "Let `^` and `$` match at the start and end of every line."),
        Param("strip", "bool", True, "Ignore spaces and blank lines around the reply."),
    ],
    examples=[
        Example("Answer: 42", None, 1.0, params={"pattern": r"^Answer: \d+$"}),
        Example("The answer is 42", None, 0.0, params={"pattern": r"^Answer: \d+$"}),
        Example("answer: 42\n", None, 1.0, params={"pattern": r"answer: \d+", "mode": "fullmatch", "ignore_case": True}),
        Example("Answer: 42 (I think)", None, 0.0, params={"pattern": r"Answer: \d+", "mode": "fullmatch"}),
    ],
)
def regex_match(prompts, completions, answers, *, pattern=r"\d", mode="search", ignore_case=False, multiline=True, strip=True):
    try:
        compiled = compile_user_regex(pattern, ignore_case, multiline)
    except Exception:  # validated earlier; a direct call with a bad pattern just scores 0
        return [0.0] * len(completions)
    fullmatch = mode == "fullmatch"
    scores = []
    for completion in completions:
        text = as_text(completion)
        if strip:
            text = text.strip()
        scores.append(1.0 if user_regex_matches(compiled, text, fullmatch) else 0.0)
    return scores
