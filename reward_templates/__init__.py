"""Reward templates: ready-made, configurable reward functions for GRPO training.

Each template is one module in this package with one function decorated by
:func:`template`; the registry imports them all on first use, so adding a
template means adding a file. Users combine templates into a
:class:`RewardSet` (a weighted sum) from plain config data::

    from reward_templates import RewardSet
    rewards = RewardSet.from_config([
        {"template": "numeric_match", "weight": 1.0},
        {"template": "tag_partial_credit", "weight": 0.25},
    ])
    totals, per_term = rewards.score(prompts, completions, answers)

Templates that run Python code (category "code") work only in trusted mode:
``set_trusted(True)`` or the environment variable ``AHA_STUDIO_TRUSTED=1``.
"""

from .base import Example, Param, RewardError, TemplateSpec, get_template, list_templates, template
from .compose import (
    DEFAULT_SET_DESCRIPTIONS,
    DEFAULT_SETS,
    RewardSet,
    RewardTerm,
    default_reward_set,
    guess_preset,
    preview,
)
from .sandbox import TRUSTED_ENV, is_trusted, set_trusted

__all__ = [
    "Param",
    "Example",
    "TemplateSpec",
    "template",
    "get_template",
    "list_templates",
    "RewardSet",
    "RewardTerm",
    "preview",
    "default_reward_set",
    "guess_preset",
    "DEFAULT_SETS",
    "DEFAULT_SET_DESCRIPTIONS",
    "RewardError",
    "TRUSTED_ENV",
    "is_trusted",
    "set_trusted",
]
