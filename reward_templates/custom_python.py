"""A reward you write in Python (trusted mode only)."""

from __future__ import annotations

import ast
import textwrap

from .base import Example, Param, RewardError, Scores, as_text, template
from .sandbox import Limits, require_trusted, run_reward

MAX_SOURCE_CHARS = 20_000
_DEFAULT = "return 1.0 if answer and answer.lower() in completion.lower() else 0.0"


def module_source(code: str) -> str:
    """Turn what the user typed into a module defining ``reward(prompt, completion, answer)``.

    A full ``def reward(...)`` is used as it is; anything else is taken as the
    body of that function.
    """
    try:
        tree = ast.parse(code)
        if any(isinstance(n, ast.FunctionDef) and n.name == "reward" for n in tree.body):
            return code
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        pass
    return "def reward(prompt, completion, answer):\n" + textwrap.indent(textwrap.dedent(code), "    ")


def _check(params: dict) -> dict:
    require_trusted("The custom_python reward")
    code = params["code"]
    if not code.strip():
        raise RewardError("The custom_python reward needs code: the body of reward(prompt, completion, answer).")
    if len(code) > MAX_SOURCE_CHARS:
        raise RewardError(f"Your reward code is too long (over {MAX_SOURCE_CHARS} characters).")
    try:
        compile(module_source(code), "<your reward>", "exec")
    except SyntaxError as exc:
        where = f" on line {exc.lineno - 1}" if exc.lineno and exc.lineno > 1 else ""
        raise RewardError(f"Your reward code has a syntax error{where}: {exc.msg}.") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise RewardError(f"Your reward code cannot be read: {type(exc).__name__}.") from None
    return params


@template(
    name="custom_python",
    title="Your own Python reward",
    description="Runs the body of `reward(prompt, completion, answer)` that you write, for every reply, in a locked-down process.",
    category="code",
    check=_check,
    params=[
        Param("code", "str", _DEFAULT, "Python that returns a number (or `None` to skip) from `prompt`, `completion` and `answer`."),
        Param("timeout_s", "float", 10.0, "Seconds the whole batch may take before it is stopped.", min=0.5, max=300.0),
        Param("memory_mb", "int", 512, "Memory the run may use, in megabytes.", min=64, max=8192),
    ],
    examples=[
        Example("The answer is Paris.", "paris", 1.0),
        Example("The answer is Lyon.", "paris", 0.0),
        Example("one two three", None, 3.0, params={"code": "return len(completion.split())"}),
        Example("anything", None, None, params={"code": "return None"}),
        Example("anything", None, None, params={"code": "return 1 / 0"}),
    ],
)
def custom_python(prompts, completions, answers, *, code=_DEFAULT, timeout_s=10.0, memory_mb=512):
    require_trusted("The custom_python reward")
    rows = [(as_text(p), as_text(c), None if a is None else as_text(a)) for p, c, a in zip(prompts, completions, answers)]
    limits = Limits(timeout_s=timeout_s, cpu_s=max(1, int(timeout_s + 0.999)), memory_mb=memory_mb)
    values, problem = run_reward(module_source(code), rows, limits)
    # The problem (one line) reaches the run's log through RewardSet.last_errors.
    return Scores(values, problem)
