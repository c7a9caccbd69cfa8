"""Building blocks shared by every reward template.

This module holds three things:

* the spec dataclasses (:class:`Param`, :class:`Example`, :class:`TemplateSpec`)
  that describe a template to the UI and validate user settings;
* the :func:`template` decorator and the registry behind
  :func:`get_template` / :func:`list_templates`, which imports every module of
  the package on first use, so adding a template means adding one file;
* small text helpers (tag extraction, number parsing, normalisation, safe
  user regexes) that templates share, so they behave consistently.

Template functions run inside the training loop on text produced by a model,
which can be anything: empty, enormous, binary junk, deeply nested tags.
Helpers here therefore never raise on text input and do bounded work: text is
clipped to :data:`MAX_CHARS` before any regex runs, and only linear-time
patterns are used.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib
import math
import pkgutil
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

try:  # The third-party `regex` engine can abort a match after a timeout.
    import regex as _user_re_engine
except ImportError:  # pragma: no cover - exercised only where it is missing
    _user_re_engine = None

__all__ = [
    "CATEGORIES",
    "PARAM_TYPES",
    "MAX_CHARS",
    "RewardError",
    "Scores",
    "short_repr",
    "Param",
    "Example",
    "TemplateSpec",
    "template",
    "get_template",
    "list_templates",
    "clip",
    "as_text",
    "extract_tag",
    "has_tag_pair",
    "extract_hash_answer",
    "extract_boxed",
    "last_number",
    "all_numbers",
    "parse_number",
    "numbers_equal",
    "reference_text",
    "normalize_text",
    "phrase_haystack",
    "count_phrase",
    "check_tag_names",
    "compile_user_regex",
    "user_regex_matches",
]

CATEGORIES = ("correctness", "format", "style", "reasoning", "code")
PARAM_TYPES = ("float", "int", "str", "bool", "choice", "list")

#: Templates look at no more than this many characters of a completion before
#: running regexes or parsers: it bounds the time any single item can take.
MAX_CHARS = 20_000


class RewardError(ValueError):
    """A configuration problem, with a one-line message meant for beginners."""


class Scores(list):
    """A template's scores plus ``problem``: one line about rows that could not be scored.

    Templates that run user code return this so that a failing row is
    reported (in ``RewardSet.last_errors``) while the other rows still count.
    """

    def __init__(self, values=(), problem: str = ""):
        super().__init__(values)
        self.problem = problem


# ---------------------------------------------------------------------------
# Spec dataclasses
# ---------------------------------------------------------------------------

_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}


def short_repr(value: Any, limit: int = 60) -> str:
    """repr() cut to ``limit`` characters, so error messages stay one short line."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fmt_num(x: float) -> str:
    """Show 1.0 as "1" and 0.25 as "0.25" in messages."""
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass
class Param:
    """One user-adjustable setting of a template.

    ``type`` is one of :data:`PARAM_TYPES`; ``list`` means a list of strings.
    ``min``/``max`` apply to numbers, ``choices`` to ``choice`` params.
    """

    name: str
    type: str
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: list[str] | None = None

    def coerce(self, value: Any, owner: str = "this template") -> Any:
        """Return ``value`` converted to this param's type, or raise RewardError.

        Values arrive from YAML files and web forms, so numbers may come as
        strings and lists as comma-separated text; both are accepted.
        """
        where = f"Setting '{self.name}' of {owner}"
        t = self.type
        if t == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
                return value.strip().lower() in _TRUE_WORDS
            raise RewardError(f"{where} must be true or false (got {short_repr(value)}).")
        if t in ("float", "int"):
            num = self._to_number(value)
            if num is None:
                kind = "a whole number" if t == "int" else "a number"
                raise RewardError(f"{where} must be {kind} (got {short_repr(value)}).")
            if t == "int":
                if num != int(num):
                    raise RewardError(f"{where} must be a whole number (got {short_repr(value)}).")
                num = int(num)
            else:
                num = float(num)
            if self.min is not None and num < self.min:
                raise RewardError(f"{where} must be at least {_fmt_num(self.min)} (got {_fmt_num(num)}).")
            if self.max is not None and num > self.max:
                raise RewardError(f"{where} must be at most {_fmt_num(self.max)} (got {_fmt_num(num)}).")
            return num
        if t == "str":
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise RewardError(f"{where} must be text (got {short_repr(value)}).")
            return str(value)
        if t == "choice":
            text = str(value).strip() if isinstance(value, (str, int, float)) else None
            if text not in (self.choices or []):
                options = ", ".join(self.choices or [])
                raise RewardError(f"{where} must be one of: {options} (got {short_repr(value)}).")
            return text
        if t == "list":
            if value is None:
                return []
            if isinstance(value, str):
                # Web forms send "a, b, c" or one item per line.
                value = re.split(r"[,\n]", value)
            if not isinstance(value, (list, tuple)):
                raise RewardError(f"{where} must be a list of words (got {short_repr(value)}).")
            items = []
            for item in value:
                if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                    raise RewardError(f"{where} must contain only text items (got {short_repr(item)}).")
                item = str(item).strip()
                if item:
                    items.append(item)
            return items
        raise RewardError(f"{where} has an unknown type {t!r}.")  # developer error

    @staticmethod
    def _to_number(value: Any) -> float | None:
        if isinstance(value, bool):
            return None  # True/False as a number is almost always a mistake
        if not isinstance(value, (int, float, str)):
            return None
        try:
            num = float(value.strip() if isinstance(value, str) else value)
        except (ValueError, OverflowError):  # OverflowError: a huge int like 10**400
            return None
        return num if math.isfinite(num) else None

    def to_dict(self) -> dict:
        """Plain-data description for the UI (JSON/YAML serialisable)."""
        d = {"name": self.name, "type": self.type, "default": copy.deepcopy(self.default), "help": self.help}
        for key in ("min", "max", "choices"):
            if getattr(self, key) is not None:
                d[key] = copy.deepcopy(getattr(self, key))
        return d


@dataclass
class Example:
    """A worked example shown in the UI and replayed by the tests."""

    completion: str
    answer: str | None
    score: float | None
    params: dict = field(default_factory=dict)
    prompt: str = ""


@dataclass
class TemplateSpec:
    """Everything the studio needs to know about one reward template.

    ``fn`` scores a batch: ``fn(prompts, completions, answers, **params)``
    returns one float (or None for "does not apply") per completion.
    ``check`` is an optional extra validator for rules that involve several
    params or need more than a type check (e.g. compiling a regex); it receives
    the coerced params and returns them (possibly adjusted) or raises
    :class:`RewardError`.
    """

    name: str
    title: str
    description: str
    category: str
    params: list[Param]
    examples: list[Example]
    needs_answer: bool
    fn: Callable
    check: Callable[[dict], dict] | None = None

    @property
    def label(self) -> str:
        return f"'{self.name}' ({self.title})"

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def validate_params(self, params: dict | None = None) -> dict:
        """Return a complete, type-checked copy of ``params`` with defaults filled in.

        Raises :class:`RewardError` (one line) for unknown names or bad values.
        """
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise RewardError(f"Settings for {self.label} must be a mapping of name: value (got {short_repr(params)}).")
        known = {p.name for p in self.params}
        for key in params:
            if key not in known:
                hint = difflib.get_close_matches(str(key), sorted(known), n=1)
                if hint:
                    extra = f" Did you mean '{hint[0]}'?"
                elif known:
                    extra = f" Available settings: {', '.join(p.name for p in self.params)}."
                else:
                    extra = " This template has no settings."
                raise RewardError(f"Unknown setting {short_repr(key)} for template {self.label}.{extra}")
        out = {}
        for p in self.params:
            raw = params[p.name] if p.name in params else copy.deepcopy(p.default)
            out[p.name] = p.coerce(raw, owner=self.label)
        if self.check is not None:
            out = self.check(out)
        return out

    def score_one(self, completion: str, answer: str | None = None, prompt: str = "", **params) -> float | None:
        """Validate ``params`` and score a single completion (handy for UI previews)."""
        return self.fn([prompt], [completion], [answer], **self.validate_params(params))[0]

    def to_dict(self) -> dict:
        """Plain-data description for the UI (everything except the function)."""
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "category": self.category,
            "needs_answer": self.needs_answer,
            "params": [p.to_dict() for p in self.params],
            "examples": [
                {
                    "prompt": e.prompt,
                    "completion": e.completion,
                    "answer": e.answer,
                    "params": copy.deepcopy(e.params),
                    "score": e.score,
                }
                for e in self.examples
            ],
        }


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

_REGISTRY: dict[str, TemplateSpec] = {}
_LOADED = False
_LOAD_LOCK = threading.RLock()
# Package modules that hold infrastructure rather than templates.
_NOT_TEMPLATES = {"base", "compose", "sandbox"}
_NAME_RE = re.compile(r"[a-z][a-z0-9_]*\Z")


def template(
    *,
    name: str,
    title: str,
    description: str,
    category: str,
    params: list[Param] | None = None,
    examples: list[Example],
    needs_answer: bool = False,
    check: Callable[[dict], dict] | None = None,
) -> Callable[[Callable], Callable]:
    """Register the decorated batch-scoring function as a reward template.

    The function is returned unchanged, with its spec attached as ``fn.spec``.
    Mistakes in the declaration raise immediately at import time so they are
    caught by the test-suite rather than by a user.
    """

    def decorate(fn: Callable) -> Callable:
        spec = TemplateSpec(
            name=name,
            title=title,
            description=description,
            category=category,
            params=list(params or []),
            examples=list(examples),
            needs_answer=needs_answer,
            fn=fn,
            check=check,
        )
        _check_declaration(spec)
        with _LOAD_LOCK:
            old = _REGISTRY.get(name)
            same_source = old is not None and (old.fn.__module__, old.fn.__qualname__) == (fn.__module__, fn.__qualname__)
            if old is not None and not same_source:
                raise ValueError(f"Reward template name {name!r} is already used by {old.fn.__module__}.")
            _REGISTRY[name] = spec
        fn.spec = spec
        return fn

    return decorate


def _check_declaration(spec: TemplateSpec) -> None:
    """Developer-facing sanity checks on a template declaration."""
    if not _NAME_RE.match(spec.name):
        raise ValueError(f"Template name {spec.name!r} must be snake_case.")
    if spec.category not in CATEGORIES:
        raise ValueError(f"Template {spec.name!r}: category must be one of {CATEGORIES}.")
    if not spec.title.strip() or not spec.description.strip():
        raise ValueError(f"Template {spec.name!r} needs a title and a description.")
    if not spec.examples:
        raise ValueError(f"Template {spec.name!r} needs at least one worked example.")
    seen = set()
    for p in spec.params:
        if p.type not in PARAM_TYPES:
            raise ValueError(f"Template {spec.name!r}: param {p.name!r} has unknown type {p.type!r}.")
        if p.type == "choice" and not p.choices:
            raise ValueError(f"Template {spec.name!r}: choice param {p.name!r} needs choices.")
        if p.name in seen:
            raise ValueError(f"Template {spec.name!r}: param {p.name!r} is declared twice.")
        seen.add(p.name)


def _ensure_loaded() -> None:
    """Import every module of the package once, so their decorators run."""
    global _LOADED
    if _LOADED:
        return
    with _LOAD_LOCK:
        if _LOADED:
            return
        package = __name__.rpartition(".")[0]
        pkg_module = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg_module.__path__):
            if info.name.startswith("_") or info.name in _NOT_TEMPLATES:
                continue
            importlib.import_module(f"{package}.{info.name}")
        _LOADED = True


def get_template(name: str) -> TemplateSpec:
    """Return the spec called ``name`` or raise a one-line RewardError with suggestions."""
    _ensure_loaded()
    spec = _REGISTRY.get(name) if isinstance(name, str) else None
    if spec is not None:
        return spec
    names = sorted(_REGISTRY)
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
    if close:
        hint = f" Did you mean: {', '.join(close)}?"
    else:
        hint = f" Available templates: {', '.join(names)}."
    raise RewardError(f"Unknown reward template {short_repr(name)}.{hint}")


def list_templates(category: str | None = None) -> list[TemplateSpec]:
    """All registered specs, sorted by category then name (optionally one category)."""
    _ensure_loaded()
    specs = [s for s in _REGISTRY.values() if category is None or s.category == category]
    order = {c: i for i, c in enumerate(CATEGORIES)}
    return sorted(specs, key=lambda s: (order.get(s.category, len(order)), s.name))


# ---------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------


def as_text(value: Any) -> str:
    """Turn whatever the trainer hands us into plain text.

    Chat-format completions arrive as a list of ``{"role", "content"}``
    messages; their contents are joined. ``None`` becomes "".
    """
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, dict):
        content = value.get("content", "")
        return content if isinstance(content, str) else as_text(content)
    if isinstance(value, (list, tuple)):
        return "\n".join(as_text(v) for v in value)
    try:
        return str(value)
    except Exception:  # a hostile __str__ must not break scoring
        return ""


def clip(text: Any, limit: int = MAX_CHARS) -> str:
    """Text bounded to ``limit`` characters (the head is kept)."""
    if not isinstance(text, str):
        text = as_text(text)
    return text if len(text) <= limit else text[:limit]


def extract_tag(text: str, tag: str, last: bool = True) -> str | None:
    """Content of ``<tag>...</tag>`` (the last pair by default), or None.

    Uses plain string search: a lazy ``<tag>(.*?)</tag>`` regex goes quadratic
    on text full of unmatched opening tags.
    """
    if not tag:
        return None
    text = clip(text)
    open_t, close_t = f"<{tag}>", f"</{tag}>"
    if last:
        end = text.rfind(close_t)
        if end < 0:
            return None
        start = text.rfind(open_t, 0, end)
        if start < 0:
            return None
    else:
        start = text.find(open_t)
        if start < 0:
            return None
        end = text.find(close_t, start + len(open_t))
        if end < 0:
            return None
    return text[start + len(open_t) : end]


def answer_text(text: str, tag: str) -> str:
    """What a template judges: the content of the last ``<tag>...</tag>`` when the reply has
    one and ``tag`` is set, else the whole reply."""
    tagged = extract_tag(text, tag)
    return tagged if tagged is not None else text


def has_tag_pair(text: str, tag: str) -> bool:
    return extract_tag(text, tag) is not None


_HASH_RE = re.compile(r"####[ \t]*([^\n]*)")


def extract_hash_answer(text: str) -> str | None:
    """The text after the last ``####`` marker (GSM8K style), or None."""
    text = clip(text)
    pos = text.rfind("####")
    if pos < 0:
        return None
    m = _HASH_RE.match(text, pos)
    value = m.group(1).strip() if m else ""
    return value or None


def extract_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}``, with nested braces balanced, or None."""
    text = clip(text)
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        ch = text[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


# A number: an optional sign (not when glued to a word or digit, so the range
# "5-6" ends in 6, not -6), digits with proper thousands commas ("12,345" but
# not "3,4"), optional decimals, or a bare ".5". Each alternative is linear.
_NUMBER_RE = re.compile(r"(?:(?<![\w.])[-−])?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")
_FRACTION_RE = re.compile(r"\s*([-−]?\d+)\s*/\s*(\d+)\s*\Z")
# Characters that commonly wrap a number but are not part of its value.
_NUMBER_STRIP = " \t\r\n$€£¥%*_`'\"()[]{}"


def all_numbers(text: str) -> list[str]:
    """Every number-looking token in ``text`` (clipped), in order."""
    return _NUMBER_RE.findall(clip(text))


def last_number(text: str) -> str | None:
    """The last number-looking token in ``text`` (clipped), or None."""
    found = _NUMBER_RE.findall(clip(text))
    return found[-1] if found else None


def parse_number(text: Any) -> float | None:
    """Parse "1,234.5", "$12", "42.", "-3", "3/4", "50%" (as 50) into a float.

    Returns None for anything that is not a single finite number.
    """
    if isinstance(text, bool) or text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text) if math.isfinite(text) else None
    if not isinstance(text, str):
        return None
    s = text.strip()
    if not s or len(s) > 400:  # longer "numbers" are junk, not answers
        return None
    s = s.strip(_NUMBER_STRIP).rstrip(".").strip(_NUMBER_STRIP)
    s = s.replace("−", "-").replace(",", "")
    if not s:
        return None
    m = _FRACTION_RE.match(s)
    if m:
        den = int(m.group(2))
        return int(m.group(1)) / den if den else None
    # float() also accepts "nan", "inf" and "1_000"; none of them is an answer.
    if not any(ch.isdigit() for ch in s) or "_" in s:
        return None
    try:
        value = float(s)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def numbers_equal(a: float, b: float, rel_tol: float = 1e-6) -> bool:
    """Equal within ``rel_tol`` relative to the reference ``b``.

    The tolerance never shrinks below ``rel_tol`` absolute, so a reference of
    0 still tolerates rounding noise.
    """
    return abs(a - b) <= rel_tol * max(abs(b), 1.0)


def reference_text(answer: Any) -> str | None:
    """The usable part of a reference answer: text after ``####`` if present.

    Returns None when there is no reference (None or blank).
    """
    if answer is None:
        return None
    text = clip(as_text(answer))
    hashed = extract_hash_answer(text)
    text = hashed if hashed is not None else text.strip()
    return text or None


_PUNCT_RE = re.compile(r"[^\w\s]|_")
# Same effect as _PUNCT_RE for pure-ASCII text, via str.translate (about 10x faster).
_ASCII_PUNCT_TABLE = str.maketrans({chr(i): " " for i in range(128) if _PUNCT_RE.match(chr(i))})
_ARTICLES_RE = re.compile(r"\b(?:a|an|the)\b", re.IGNORECASE)


def normalize_text(text: Any, lowercase: bool = True, punctuation: bool = True, articles: bool = False) -> str:
    """Loosen text for comparison: case, punctuation (to spaces), articles, whitespace."""
    text = clip(text)
    if lowercase:
        text = text.lower()
    if punctuation:
        # Replacing with a space (rather than deleting) keeps word boundaries:
        # "answer:12." must still contain the word "12".
        text = text.translate(_ASCII_PUNCT_TABLE) if text.isascii() else _PUNCT_RE.sub(" ", text)
    if articles:
        text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def phrase_haystack(normalized: str) -> str:
    """Prepare normalised text for whole-word phrase counting with :func:`count_phrase`.

    Words are separated by two spaces (and the ends padded with one), so
    ``" word "`` occurrences never overlap and can be counted with str.count.
    """
    return f" {'  '.join(normalized.split(' '))} " if normalized else ""


def count_phrase(haystack: str, normalized_phrase: str) -> int:
    """Whole-word occurrences of a normalised phrase in a :func:`phrase_haystack`."""
    if not normalized_phrase:
        return 0
    return haystack.count(" " + "  ".join(normalized_phrase.split(" ")) + " ")


_TAG_NAME_RE = re.compile(r"[A-Za-z_][\w.:-]{0,63}\Z")


def tag_params() -> list["Param"]:
    """The reasoning/answer tag-name params shared by the tag templates."""
    return [
        Param("reasoning_tag", "str", "think", "Tag for the reasoning part, as in `<think>...</think>`."),
        Param("answer_tag", "str", "answer", "Tag for the final answer, as in `<answer>...</answer>`."),
    ]


def check_tag_names(*param_names: str) -> Callable[[dict], dict]:
    """Build a ``TemplateSpec.check`` that validates tag-name params.

    Beginners often type the tag itself ("<answer>"), so angle brackets and
    slashes are stripped before checking.
    """

    def check(params: dict) -> dict:
        for name in param_names:
            value = params[name].strip().strip("<>/").strip()
            if not _TAG_NAME_RE.match(value):
                raise RewardError(
                    f"Setting '{name}' must be a tag name made of letters, digits, '_' or '-', like answer (got {short_repr(params[name])})."
                )
            params[name] = value
        return params

    return check


def compare_tag_param() -> "Param":
    """The optional answer tag of the templates that compare a reply with the reference."""
    return Param("answer_tag", "str", "answer",
                 "Compare only the text inside this tag when the model uses it; leave empty to "
                 "compare the whole reply.")


def optional_tag_name(params: dict, name: str = "answer_tag") -> dict:
    """Validate a tag-name setting that may be left empty ("use the whole completion")."""
    params[name] = params[name].strip().strip("<>/").strip()
    return check_tag_names(name)(params) if params[name] else params


# -- user-supplied regular expressions ---------------------------------------

# Without the timeout-capable engine we fall back to `re`, which cannot be
# interrupted, so we look at less text (even simple patterns like r"\d+x" are
# quadratic on long runs of digits) and refuse the classic exponential shapes
# such as "(a+)+" up front.
USER_REGEX_TIMEOUT_S = 0.05
USER_REGEX_FALLBACK_MAX_CHARS = 4_000
_NESTED_QUANTIFIER_RE = re.compile(r"\((?:[^()\\]|\\.)*(?:[+*]|\})\??\)(?:[+*{])")


@functools.lru_cache(maxsize=256)
def _compile_user_regex(pattern: str, ignore_case: bool, multiline: bool, use_regex_module: bool):
    engine = _user_re_engine if use_regex_module else re
    flags = (engine.IGNORECASE if ignore_case else 0) | (engine.MULTILINE if multiline else 0)
    return engine.compile(pattern, flags)


def compile_user_regex(pattern: str, ignore_case: bool = False, multiline: bool = False):
    """Compile a pattern typed by a user, or raise a one-line RewardError."""
    if not isinstance(pattern, str) or pattern == "":
        raise RewardError("The pattern is empty: type the text or regular expression to look for.")
    if len(pattern) > 1000:
        raise RewardError("The pattern is too long (over 1000 characters): please shorten it.")
    if _user_re_engine is None and _NESTED_QUANTIFIER_RE.search(pattern):
        raise RewardError(
            f"The pattern {short_repr(pattern)} repeats a repeated group like (a+)+, which can take forever: simplify it."
        )
    try:
        return _compile_user_regex(pattern, bool(ignore_case), bool(multiline), _user_re_engine is not None)
    except Exception as exc:  # re.error / regex.error, and anything odd
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RewardError(f"The pattern {short_repr(pattern)} is not a valid regular expression: {msg}.") from None


def user_regex_matches(compiled, text: str, fullmatch: bool = False) -> bool:
    """Whether a compiled user pattern matches; False on timeout or any engine error."""
    try:
        method = compiled.fullmatch if fullmatch else compiled.search
        if _user_re_engine is not None and isinstance(compiled, _user_re_engine.Pattern):
            return method(clip(text), timeout=USER_REGEX_TIMEOUT_S) is not None
        return method(clip(text, USER_REGEX_FALLBACK_MAX_CHARS)) is not None
    except Exception:  # TimeoutError, RecursionError, engine bugs: no match
        return False
