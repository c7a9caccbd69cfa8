"""Reward replies that contain valid JSON, optionally with the keys you need."""

from __future__ import annotations

import json
import re

from .base import Example, Param, clip, template

# A fenced block: ```json ... ``` or plain ``` ... ```. The body is lazy but
# bounded by the first closing fence, and the input is clipped beforehand.
_FENCE_RE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\r?\n?(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder()


def find_json(text: str, allow_surrounding_text: bool = True):
    """Find the JSON in ``text``: a fenced block, else the whole text, else the first {...}.

    Returns ``(parsed, value)``; the flag is needed because a valid JSON
    ``null`` parses to None.
    """
    stripped = text.strip()
    fence = _FENCE_RE.search(stripped) if "```" in stripped else None
    if fence is not None and (allow_surrounding_text or fence.group(0) == stripped):
        return _loads(fence.group(1))
    ok, value = _loads(stripped)
    if ok or not allow_surrounding_text:
        return ok, value
    start = stripped.find("{")
    if start < 0:
        return False, None
    try:
        # raw_decode parses one value starting at `start` and ignores the rest.
        return True, _DECODER.raw_decode(stripped, start)[0]
    except (ValueError, RecursionError):
        return False, None


def _loads(text: str):
    try:
        return True, json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return False, None


@template(
    name="json_valid",
    title="Valid JSON",
    description="Gives a reward when the reply contains valid JSON, with partial reward for each required key it has.",
    category="format",
    params=[
        Param("required_keys", "list", [], "Top-level keys the JSON object must have (leave empty to only check validity)."),
        Param(
            "allow_surrounding_text",
            "bool",
            True,
            "Accept JSON inside a Markdown code block or surrounded by other text; if off, the reply must be only JSON.",
        ),
    ],
    examples=[
        Example('{"name": "Ada", "age": 36}', None, 1.0),
        Example('Here you go:\n```json\n{"name": "Ada"}\n```', None, 1.0),
        Example('Sure! {"name": "Ada"} Hope that helps.', None, 1.0),
        Example('Sure! {"name": "Ada"}', None, 0.0, params={"allow_surrounding_text": False}),
        Example('{"name": "Ada"}', None, 0.5, params={"required_keys": ["name", "age"]}),
        Example("{'name': 'Ada'}", None, 0.0),
        Example("[1, 2, 3]", None, 0.0, params={"required_keys": ["name"]}),
    ],
)
def json_valid(prompts, completions, answers, *, required_keys=(), allow_surrounding_text=True):
    scores = []
    for completion in completions:
        ok, value = find_json(clip(completion), allow_surrounding_text)
        if not ok:
            scores.append(0.0)
        elif not required_keys:
            scores.append(1.0)
        elif not isinstance(value, dict):
            scores.append(0.0)  # keys were asked for, so a list or number misses them all
        else:
            scores.append(sum(1 for k in required_keys if k in value) / len(required_keys))
    return scores
