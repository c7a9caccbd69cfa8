"""Reward Python code that runs and passes the tests (trusted mode only)."""

from __future__ import annotations

import json
import re

from .base import Example, Param, clip, reference_text, template
from .sandbox import Limits, require_trusted, run_tests

# The last fenced block marked python/py (or unmarked). Lazy body, bounded by
# the closing fence, on clipped text.
_FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(text: str) -> str:
    """The code in a reply: its last ```python block, or the whole reply if it has none."""
    text = clip(text)
    blocks = _FENCE_RE.findall(text) if "```" in text else []
    return blocks[-1] if blocks else text


def tests_text(answer: str | None, extra: str) -> str:
    """The test code for one row: the row's reference (a list of asserts or plain code) plus ``extra``."""
    parts = []
    ref = None if answer is None else clip(answer).strip() or None
    if ref is not None:
        try:
            value = json.loads(ref)
        except (ValueError, RecursionError):
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            parts.extend(value)  # e.g. MBPP's test_list
        else:
            parts.append(reference_text(ref) if ref.startswith("####") else ref)
    if extra.strip():
        parts.append(extra)
    return "\n".join(parts)


def _check(params: dict) -> dict:
    require_trusted("The python_tests reward")
    return params


@template(
    name="python_tests",
    title="Code passes tests",
    description="Runs the Python code in the reply with the row's tests in a locked-down process and rewards the share of tests that pass.",
    category="code",
    needs_answer=True,
    check=_check,
    params=[
        Param("tests", "str", "", "Extra test lines (asserts) run for every row, after the row's own tests."),
        Param("partial_credit", "bool", True, "Give a share of the reward for each passing test; if off, all must pass."),
        Param("timeout_s", "float", 2.0, "Seconds each reply's code may run before it is stopped.", min=0.1, max=60.0),
        Param("memory_mb", "int", 256, "Memory each run may use, in megabytes.", min=64, max=8192),
    ],
    examples=[
        Example("```python\ndef add(a, b):\n    return a + b\n```", '["assert add(1, 2) == 3", "assert add(2, 2) == 4"]', 1.0),
        Example("def add(a, b):\n    return a - b", "assert add(1, 2) == 3\nassert add(2, 0) == 2", 0.5),
        Example("def add(a, b):\n    return a - b", "assert add(1, 2) == 3\nassert add(2, 0) == 2", 0.0, params={"partial_credit": False}),
        Example("def add(a, b) return a + b", "assert add(1, 2) == 3", 0.0),
        Example("while True:\n    pass", "assert True", 0.0, params={"timeout_s": 0.5}),
        Example("def f(): pass", None, None),
    ],
)
def python_tests(prompts, completions, answers, *, tests="", partial_credit=True, timeout_s=2.0, memory_mb=256):
    require_trusted("The python_tests reward")
    items, where = [], []
    for i, (completion, answer) in enumerate(zip(completions, answers)):
        suite = tests_text(answer, tests)
        if suite.strip():
            items.append((extract_code(completion), suite))
            where.append(i)
    limits = Limits(timeout_s=timeout_s, cpu_s=max(1, int(timeout_s + 0.999)), memory_mb=memory_mb)
    scores: list[float | None] = [None] * len(completions)
    for i, outcome in zip(where, run_tests(items, limits)):
        if not outcome.ran or outcome.total == 0:
            scores[i] = 0.0
        elif partial_credit:
            scores[i] = outcome.passed / outcome.total
        else:
            scores[i] = 1.0 if outcome.passed == outcome.total else 0.0
    return scores
