"""Combine templates into one weighted reward, preview it, and pick a sensible default.

A :class:`RewardSet` is what the trainer calls: it validates every term once
up front (so configuration mistakes surface before training starts) and then
scores batches without ever raising, because one buggy term must not kill a
long training run.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from .base import RewardError, TemplateSpec, as_text, get_template, parse_number, reference_text, short_repr
from .multiple_choice import reference_letter as choice_letter

__all__ = [
    "RewardTerm",
    "RewardSet",
    "preview",
    "default_reward_set",
    "guess_preset",
    "DEFAULT_SETS",
    "DEFAULT_SET_DESCRIPTIONS",
]

# Column names used by preview() and the trainer's logs; terms may not take them.
_RESERVED_NAMES = {"total", "completion", "prompt", "answer"}
_TERM_KEYS = ("template", "weight", "params", "name")


@dataclass
class RewardTerm:
    """One template with its weight and settings inside a :class:`RewardSet`.

    ``name`` labels the term in logs and previews; it defaults to the template
    name, with ``_2``, ``_3``... added when a template is used more than once.
    """

    template: str
    weight: float = 1.0
    params: dict = field(default_factory=dict)
    name: str | None = None


def _answer_text(answer: Any) -> str | None:
    """Reference answers may come from a dataset as numbers or JSON objects."""
    if answer is None or isinstance(answer, str):
        return answer
    if isinstance(answer, (dict, list)):
        try:
            return json.dumps(answer, ensure_ascii=False, default=str)
        except Exception:  # circular or absurdly deep data
            return short_repr(answer, 1000)
    return as_text(answer)


def _one_line(exc: BaseException) -> str:
    try:
        text = " ".join(str(exc).split())
    except Exception:  # an exception whose message itself fails
        text = ""
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RewardSet:
    """A weighted sum of reward templates.

    ``terms`` holds validated copies of the given terms: names resolved,
    weights as floats and params complete (defaults filled in).
    """

    def __init__(self, terms: list[RewardTerm]):
        if isinstance(terms, RewardTerm):
            terms = [terms]
        if not isinstance(terms, (list, tuple)):
            raise RewardError("A reward set needs a list of terms.")
        resolved: list[RewardTerm] = []
        specs: list[TemplateSpec] = []
        for index, term in enumerate(terms, start=1):
            if not isinstance(term, RewardTerm):
                raise RewardError(f"Reward term {index} must be a RewardTerm (got {type(term).__name__}).")
            spec = get_template(term.template)
            weight = _check_weight(term.weight, term.name or spec.name)
            params = spec.validate_params(term.params)
            resolved.append(RewardTerm(spec.name, weight, params, term.name))
            specs.append(spec)
        _assign_names(resolved)
        self.terms = resolved
        self._specs = specs
        #: One-line descriptions of terms that failed during the last score() call.
        self.last_errors: list[str] = []
        #: Name of the DEFAULT_SETS entry this set came from, if any.
        self.preset: str | None = None

    @classmethod
    def from_config(cls, items: list[dict]) -> "RewardSet":
        """Build from plain data, e.g. ``[{"template": "numeric_match", "weight": 1.0, "params": {...}}]``."""
        if not isinstance(items, (list, tuple)):
            raise RewardError("The reward config must be a list of terms, each with at least a 'template'.")
        terms = []
        for index, item in enumerate(items, start=1):
            if not isinstance(item, dict):
                raise RewardError(f"Reward term {index} must be a mapping like {{template: numeric_match}} (got {short_repr(item)}).")
            for key in item:
                if key not in _TERM_KEYS:
                    hint = difflib.get_close_matches(str(key), _TERM_KEYS, n=1)
                    extra = f" Did you mean '{hint[0]}'?" if hint else f" Allowed keys: {', '.join(_TERM_KEYS)}."
                    raise RewardError(f"Unknown key {short_repr(key)} in reward term {index}.{extra}")
            if "template" not in item:
                raise RewardError(f"Reward term {index} has no 'template' (e.g. template: numeric_match).")
            params = item.get("params")
            terms.append(
                RewardTerm(
                    template=item["template"],
                    weight=item.get("weight", 1.0),
                    params={} if params is None else params,
                    name=item.get("name"),
                )
            )
        return cls(terms)

    def to_config(self) -> list[dict]:
        """Plain dicts/lists/str/float/bool, safe for ``yaml.safe_dump``; round-trips via from_config."""
        return [
            {"template": t.template, "weight": t.weight, "params": copy.deepcopy(t.params), "name": t.name}
            for t in self.terms
        ]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.terms]

    @property
    def needs_answer(self) -> list[str]:
        """Names of the terms that need a reference answer column."""
        return [t.name for t, s in zip(self.terms, self._specs) if s.needs_answer]

    @property
    def correctness_best(self) -> dict[str, float]:
        """The score of a right answer for each correctness term (its `correct_score`, else 1).

        What "accuracy" means for a reward set: the share of answers that earn this in every
        correctness term. Collapse warnings and evaluations read it.
        """
        return {t.name: float(t.params.get("correct_score", 1.0))
                for t, s in zip(self.terms, self._specs) if s.category == "correctness"}

    @property
    def weights(self) -> dict[str, float]:
        return {t.name: t.weight for t in self.terms}

    def __len__(self) -> int:
        return len(self.terms)

    def __repr__(self) -> str:
        inner = ", ".join(f"{t.name}×{t.weight:g}" for t in self.terms)
        return f"RewardSet({inner})"

    def score(self, prompts, completions, answers=None) -> tuple[list[float], dict[str, list[float | None]]]:
        """Score a batch: ``(totals, {term name: per-item scores})``.

        A None score ("does not apply") adds 0 to the total but stays None in
        the per-term list so averages can skip it. A term that crashes yields
        None for the whole batch and a line in :attr:`last_errors`.
        """
        completions = [as_text(c) for c in completions]
        n = len(completions)
        prompts = [""] * n if prompts is None else [as_text(p) for p in prompts]
        answers = [None] * n if answers is None else [_answer_text(a) for a in answers]
        if len(prompts) != n or len(answers) != n:
            raise RewardError(
                f"Got {len(prompts)} prompts, {n} completions and {len(answers)} answers; they must be the same length."
            )
        self.last_errors = []
        totals = [0.0] * n
        per_term: dict[str, list[float | None]] = {}
        for term, spec in zip(self.terms, self._specs):
            values = self._run_term(term, spec, prompts, completions, answers)
            per_term[term.name] = values
            weight = term.weight
            for i, v in enumerate(values):
                if v is not None:
                    totals[i] += weight * v
        return totals, per_term

    def _run_term(self, term: RewardTerm, spec: TemplateSpec, prompts, completions, answers) -> list[float | None]:
        n = len(completions)
        try:
            raw = spec.fn(prompts, completions, answers, **term.params)
            problem = getattr(raw, "problem", "")
            raw = list(raw)
            if len(raw) != n:
                raise ValueError(f"returned {len(raw)} scores for {n} completions")
        except Exception as exc:  # never let one term stop training
            self.last_errors.append(f"{term.name}: {_one_line(exc)}")
            return [None] * n
        values: list[float | None] = []
        bad = 0
        for v in raw:
            if v is None:
                values.append(None)
                continue
            try:
                f = float(v)
            except (TypeError, ValueError):
                f = math.nan
            if math.isfinite(f):
                values.append(f)
            else:
                values.append(None)
                bad += 1
        if problem:
            self.last_errors.append(f"{term.name}: {' '.join(str(problem).split())[:300]}")
        if bad:
            self.last_errors.append(f"{term.name}: {bad} score(s) were not finite numbers and were ignored")
        return values


def _check_weight(weight: Any, label: str) -> float:
    value = None
    # True as a weight is a typo, not 1.0.
    if isinstance(weight, (int, float, str)) and not isinstance(weight, bool):
        try:
            value = float(weight.strip() if isinstance(weight, str) else weight)
        except (ValueError, OverflowError):
            value = None
    if value is None or not math.isfinite(value):
        raise RewardError(f"The weight of '{label}' must be a number like 1.0 (got {short_repr(weight)}).")
    return value


def _assign_names(terms: list[RewardTerm]) -> None:
    """Fill in missing names; explicit names must be unique."""
    taken: set[str] = set()
    for term in terms:
        if term.name is None:
            continue
        if not isinstance(term.name, str) or not term.name.strip() or len(term.name) > 64:
            raise RewardError(
                f"The name of a '{term.template}' term must be text of 1 to 64 characters (got {short_repr(term.name)})."
            )
        term.name = term.name.strip()
        if term.name in _RESERVED_NAMES:
            raise RewardError(f"'{term.name}' is reserved; please give the '{term.template}' term another name.")
        if term.name in taken:
            raise RewardError(f"Two reward terms are both named '{term.name}'; names must be different.")
        taken.add(term.name)
    for term in terms:
        if term.name is not None:
            continue
        candidate, k = term.template, 1
        while candidate in taken:
            k += 1
            candidate = f"{term.template}_{k}"
        term.name = candidate
        taken.add(candidate)


def preview(reward_set: RewardSet, prompts, completions, answers=None) -> list[dict]:
    """One row per completion: ``{"completion", <term name>: score, ..., "total"}``."""
    totals, per_term = reward_set.score(prompts, completions, answers)
    rows = []
    for i, completion in enumerate(completions):
        row = {"completion": as_text(completion)}
        for name, values in per_term.items():
            row[name] = values[i]
        row["total"] = totals[i]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# Ready-made sets
# ---------------------------------------------------------------------------

DEFAULT_SETS: dict[str, list[dict]] = {
    # Correctness dominates; the small tag checklist teaches the
    # <think>/<answer> layout that numeric_match reads the answer from.
    "math": [
        {"template": "numeric_match", "weight": 1.0, "params": {}},
        {"template": "tag_partial_credit", "weight": 0.25, "params": {}},
    ],
    # Option letters (A, B, C...): the right letter, read from the answer tag
    # when the think/answer layout is used.
    "multiple_choice": [
        {"template": "multiple_choice", "weight": 1.0, "params": {}},
        {"template": "tag_partial_credit", "weight": 0.25, "params": {}},
    ],
    # Exact answers score most; merely mentioning the answer still helps
    # early on; a light length term discourages essays.
    "short_answer": [
        {"template": "exact_match", "weight": 1.0, "params": {}},
        {"template": "contains_answer", "weight": 0.5, "params": {}},
        {"template": "length_target", "weight": 0.2, "params": {"unit": "words", "target": 20, "tolerance": 20}},
    ],
    # Valid JSON with the right keys first; the content check is a bonus.
    # default_reward_set() fills required_keys from the dataset's answers.
    "json": [
        {"template": "json_valid", "weight": 1.0, "params": {"required_keys": []}},
        {"template": "contains_answer", "weight": 0.5, "params": {}},
    ],
    # Without reference answers we can only shape style.
    "open_ended": [
        {"template": "length_target", "weight": 0.5, "params": {"unit": "words", "target": 150, "tolerance": 100}},
        {"template": "repetition_penalty", "weight": 1.0, "params": {}},
    ],
}

DEFAULT_SET_DESCRIPTIONS: dict[str, str] = {
    "math": "Math answers: reward the right final number and the think/answer layout.",
    "multiple_choice": "Multiple choice: reward picking the same option letter as the reference.",
    "short_answer": "Short factual answers: reward matching the reference and keeping it brief.",
    "json": "JSON output: reward valid JSON with the expected keys and the right content.",
    "open_ended": "No reference answers: reward a reasonable length and no repetition.",
}

# Share of non-empty answers that must look numeric / like JSON objects.
_MAJORITY = 0.8
_SHORT_ANSWER_WORDS = 10
_MAX_JSON_KEYS = 20


def _json_object(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _sample_answers(sample: list[dict]) -> tuple[int, list[str]]:
    rows = [r for r in (sample or []) if isinstance(r, dict)]
    answers = []
    for row in rows:
        text = reference_text(_answer_text(row.get("answer")))
        if text is not None:
            answers.append(text)
    return len(rows), answers


def guess_preset(sample: list[dict]) -> str:
    """Name of the :data:`DEFAULT_SETS` entry that suits rows with question/answer keys."""
    n_rows, answers = _sample_answers(sample)
    # Mostly unanswered data cannot support correctness rewards.
    if not answers or len(answers) < 0.5 * n_rows:
        return "open_ended"
    need = _MAJORITY * len(answers)
    if sum(1 for a in answers if _json_object(a) is not None) >= need:
        return "json"
    if sum(1 for a in answers if parse_number(a) is not None) >= need:
        return "math"
    if sum(1 for a in answers if choice_letter(a) is not None) >= need:
        return "multiple_choice"
    if statistics.median(len(a.split()) for a in answers) <= _SHORT_ANSWER_WORDS:
        return "short_answer"
    return "open_ended"


def default_reward_set(sample: list[dict]) -> RewardSet:
    """A sensible starting RewardSet for a dataset, judged from a few rows.

    ``sample`` rows have ``question`` and ``answer`` keys. The chosen preset
    name is kept on the result as ``preset``.
    """
    preset = guess_preset(sample)
    config = copy.deepcopy(DEFAULT_SETS[preset])
    if preset == "json":
        _, answers = _sample_answers(sample)
        objects = [o for o in (_json_object(a) for a in answers) if o is not None]
        # Keys every sampled answer has; if they share none, the first one's keys.
        keys = [k for k in objects[0] if all(k in o for o in objects[1:])] or list(objects[0])
        config[0]["params"]["required_keys"] = [str(k) for k in keys[:_MAX_JSON_KEYS]]
    reward_set = RewardSet.from_config(config)
    reward_set.preset = preset
    return reward_set
