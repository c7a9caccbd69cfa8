"""Tests for the reward-template library (reward_templates/).

Tests parametrised over the registry cover templates added later
automatically: their worked examples, metadata and robustness on hostile text.
"""

from __future__ import annotations

import math
import pkgutil
import re
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reward_templates
from reward_templates import (
    DEFAULT_SETS,
    Example,
    Param,
    RewardError,
    RewardSet,
    RewardTerm,
    TemplateSpec,
    default_reward_set,
    get_template,
    list_templates,
    preview,
)
from reward_templates import base
from reward_templates.semantic_similarity import load_model as load_embedding_model

SPECS = list_templates()
SPEC_IDS = [s.name for s in SPECS]

EXPECTED_TEMPLATES = {
    "numeric_match",
    "exact_match",
    "contains_answer",
    "answer_tags",
    "tag_partial_credit",
    "length_target",
    "repetition_penalty",
    "required_keywords",
    "banned_words",
    "regex_match",
    "starts_ends_with",
    "reasoning_length",
    "json_valid",
    "multiple_choice",
    "text_overlap",
    "semantic_similarity",
    "spelling",
    "writing_script",
    "answer_language",
    "python_tests",
    "custom_python",
}


@pytest.fixture(autouse=True)
def trusted_mode(monkeypatch):
    # The code templates refuse to run outside trusted mode (tests/test_sandbox.py
    # checks that); here every template must be usable.
    monkeypatch.setenv("AHA_STUDIO_TRUSTED", "1")


# Load the embedding model once up front: the timing checks below bound the
# work per batch, not the one-off load of the model.
load_embedding_model()


def approx_equal(got, want) -> bool:
    if want is None or got is None:
        return got is want
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------
# Registry and spec metadata
# ---------------------------------------------------------------------------


def test_registry_discovers_every_template():
    assert EXPECTED_TEMPLATES <= set(SPEC_IDS)
    assert len(SPEC_IDS) == len(set(SPEC_IDS))


def test_every_template_module_registers_something():
    # Adding a template = adding a file: each non-infrastructure module must
    # have been imported by discovery and contributed a spec.
    modules = {
        m.name
        for m in pkgutil.iter_modules(reward_templates.__path__)
        if not m.name.startswith("_") and m.name not in {"base", "compose", "sandbox"}
    }
    registered_from = {s.fn.__module__.rpartition(".")[2] for s in SPECS}
    assert modules <= registered_from


def test_get_template_returns_spec_and_rejects_unknown():
    assert get_template("numeric_match").name == "numeric_match"
    with pytest.raises(RewardError) as err:
        get_template("numeric_mach")
    assert "numeric_match" in one_line(err)
    with pytest.raises(RewardError) as err:
        get_template("zzzz")
    assert "Available templates" in one_line(err)


def test_list_templates_filters_by_category():
    fmt = list_templates("format")
    assert fmt and all(s.category == "format" for s in fmt)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_spec_metadata(spec: TemplateSpec):
    assert re.fullmatch(r"[a-z][a-z0-9_]*", spec.name)
    assert spec.title.strip()
    desc = spec.description.strip()
    assert desc and desc.endswith(".")
    # One sentence: no sentence break inside.
    assert not re.search(r"[.!?]\s+[A-Z]", desc), desc
    assert spec.category in base.CATEGORIES
    assert spec.examples
    assert callable(spec.fn)
    names = [p.name for p in spec.params]
    assert len(names) == len(set(names))
    for p in spec.params:
        assert p.help.strip(), p.name
        assert p.type in base.PARAM_TYPES
        if p.type == "choice":
            assert p.default in p.choices
    defaults = spec.validate_params({})
    assert set(defaults) == set(names)
    # Defaults must survive validation unchanged.
    assert spec.validate_params(defaults) == defaults
    # The UI description is plain data.
    assert yaml.safe_load(yaml.safe_dump(spec.to_dict()))["name"] == spec.name


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_examples_cover_more_than_one_outcome(spec: TemplateSpec):
    # A worked example set that only shows one score teaches nothing.
    assert len({e.score for e in spec.examples}) >= 2


EXAMPLE_CASES = [(s, i) for s in SPECS for i in range(len(s.examples))]


@pytest.mark.parametrize(
    "spec,index", EXAMPLE_CASES, ids=[f"{s.name}[{i}]" for s, i in EXAMPLE_CASES]
)
def test_worked_examples_reproduce(spec: TemplateSpec, index: int):
    ex: Example = spec.examples[index]
    params = spec.validate_params(ex.params)
    got = spec.fn([ex.prompt], [ex.completion], [ex.answer], **params)
    assert len(got) == 1
    assert approx_equal(got[0], ex.score), (ex.completion[:80], got[0], ex.score)


# ---------------------------------------------------------------------------
# Hand-written high / low cases per template
# ---------------------------------------------------------------------------

# (template, params, completion, answer, expected score)
HAND_CASES = [
    ("numeric_match", {}, "<think>7*6</think><answer>$42.</answer>", "#### 42", 1.0),
    ("numeric_match", {}, "We get 40, then 2 more: 42", "42", 1.0),
    ("numeric_match", {}, "<answer>41</answer> wait, 42", "42", 0.0),
    ("numeric_match", {"source": "last_number"}, "<answer>41</answer> wait, 42", "42", 1.0),
    ("numeric_match", {"source": "boxed"}, "The answer is 42", "42", 0.0),
    ("numeric_match", {}, "-3", "-3.0", 1.0),
    ("numeric_match", {}, "no idea", "7", 0.0),
    ("numeric_match", {"correct_score": 2.0}, "7", "7", 2.0),
    ("numeric_match", {}, "7", None, None),
    ("exact_match", {}, "<answer>The Beatles!</answer>", "beatles", 1.0),
    ("exact_match", {}, "<answer>The Rolling Stones</answer>", "beatles", 0.0),
    ("exact_match", {"answer_tag": ""}, "<answer>beatles</answer>", "beatles", 0.0),
    ("exact_match", {"ignore_case": False}, "Beatles", "beatles", 0.0),
    ("contains_answer", {}, "The band was the Beatles, I think.", "Beatles", 1.0),
    ("contains_answer", {}, "The band was the Stones.", "Beatles", 0.0),
    ("contains_answer", {}, "Costs 12.50 dollars", "12.5", 1.0),
    ("contains_answer", {}, "Costs 1.12 dollars", "12", 0.0),
    ("contains_answer", {}, "Anything", "", None),
    ("answer_tags", {}, "  <think>a</think>  <answer>b</answer>\n", None, 1.0),
    ("answer_tags", {}, "<think>a</think><answer>b</answer><answer>c</answer>", None, 0.0),
    ("answer_tags", {}, "<think>a</think>text<answer>b</answer>", None, 0.0),
    ("answer_tags", {"mode": "soft"}, "<think>a</think>text<answer>b</answer>", None, 1.0),
    ("answer_tags", {"mode": "soft"}, "<think>a<answer>b</answer>", None, 0.0),
    ("tag_partial_credit", {}, "<think>a</think>\n<answer>b</answer>\n", None, 1.0),
    ("tag_partial_credit", {}, "<think>a</think><think>b</think>", None, 0.0),
    ("tag_partial_credit", {}, "<answer>b</answer>", None, 0.5),
    ("tag_partial_credit", {"max_penalty": 0.2}, "<answer>b</answer>" + "y" * 5000, None, 0.3),
    ("length_target", {"target": 3, "tolerance": 1}, "one two three", None, 1.0),
    ("length_target", {"target": 3, "tolerance": 1}, "one two three four five six", None, 0.0),
    ("length_target", {"target": 10, "tolerance": 0}, "one two", None, 0.0),
    ("length_target", {"unit": "characters", "target": 10, "tolerance": 2}, "x" * 13, None, 0.5),
    ("repetition_penalty", {}, "a b c d e f g h i j", None, 0.0),
    ("repetition_penalty", {"n": 1}, "go go go go", None, -0.75),
    ("repetition_penalty", {}, "x", None, 0.0),
    ("required_keywords", {"keywords": ["Paris", "Seine"]}, "paris lies on the seine.", None, 1.0),
    ("required_keywords", {"keywords": ["Paris", "Seine"]}, "London lies on the Thames.", None, 0.0),
    ("required_keywords", {"keywords": "paris, seine"}, "Paris!", None, 0.5),
    ("required_keywords", {"keywords": ["Paris"], "ignore_case": False}, "paris", None, 0.0),
    ("banned_words", {"words": ["um"]}, "A clear answer.", None, 0.0),
    ("banned_words", {"words": ["um"]}, "Um, um, well um...", None, -0.3),
    ("banned_words", {"words": ["um"], "max_penalty": 0.15}, "um um um um", None, -0.15),
    ("banned_words", {"words": ["um"]}, "umbrella", None, 0.0),
    ("regex_match", {"pattern": r"^\d+$", "mode": "fullmatch"}, " 123 ", None, 1.0),
    ("regex_match", {"pattern": r"^\d+$", "mode": "fullmatch", "strip": False}, " 123 ", None, 0.0),
    ("regex_match", {"pattern": "^final:", "ignore_case": True}, "thinking\nFINAL: 3", None, 1.0),
    ("regex_match", {"pattern": "^final:", "multiline": False}, "thinking\nfinal: 3", None, 0.0),
    ("starts_ends_with", {"prefix": "Dear"}, "Dear Sir, ...", None, 1.0),
    ("starts_ends_with", {"prefix": "Dear"}, "Hello Sir", None, 0.0),
    ("starts_ends_with", {"suffix": "Regards."}, "...\nRegards.\n\n", None, 1.0),
    ("starts_ends_with", {"suffix": "Regards.", "strip": False}, "...\nRegards.\n\n", None, 0.0),
    ("reasoning_length", {"min_words": 2, "max_words": 4}, "<think>a b c</think>", None, 1.0),
    ("reasoning_length", {"min_words": 4, "max_words": 8}, "<think>a</think>", None, 0.25),
    ("reasoning_length", {"min_words": 1, "max_words": 2}, "<think>" + "w " * 100 + "</think>", None, 0.5),
    ("reasoning_length", {"min_words": 1, "max_words": 4}, "<think>a b c d e f</think>", None, 0.75),
    ("reasoning_length", {}, "<think> never closed", None, 0.0),
    ("json_valid", {}, '```\n{"a": [1, 2, {"b": null}]}\n```', None, 1.0),
    ("json_valid", {}, "null", None, 1.0),
    ("json_valid", {}, '{"a": 1,}', None, 0.0),
    ("json_valid", {"required_keys": ["a", "b", "c", "d"]}, 'x {"a": 1, "c": 2} y', None, 0.5),
    ("json_valid", {"allow_surrounding_text": False}, '```json\n{"a": 1}\n```', None, 1.0),
    ("multiple_choice", {}, "Let me think. A is wrong, so the final answer is **C**.", "C", 1.0),
    ("multiple_choice", {}, "The answer is a bit tricky, but the answer is (D)", "(d)", 1.0),
    ("multiple_choice", {}, "\\boxed{B}", "Answer: B", 1.0),
    ("multiple_choice", {}, "<answer>(A) 42</answer>", "B", 0.0),
    ("multiple_choice", {}, "A good question.", "A", 0.0),
    ("multiple_choice", {"letters": "ABCD"}, "Answer: E", "D", 0.0),
    ("text_overlap", {}, "It was Jane Austen", "Jane Austen", 2 / 3),
    ("text_overlap", {}, "Charles Dickens", "Jane Austen", 0.0),
    ("text_overlap", {"metric": "rouge_l"}, "austen jane", "Jane Austen", 0.5),
    ("text_overlap", {"answer_tag": ""}, "<answer>x</answer> jane austen", "Jane Austen", 4 / 7),
    ("semantic_similarity", {}, "Paris is the capital city of France.", "The capital of France is Paris.", "high"),
    ("semantic_similarity", {}, "My cat sleeps all day long.", "The capital of France is Paris.", 0.0),
    ("spelling", {}, "This sentence is spelled correctly.", None, 0.0),
    ("spelling", {}, "Thsi sentance is mispelled.", None, -0.2),
    ("spelling", {"ignore_capitalized": False}, "Thsi sentance is mispelled.", None, -0.3),
    ("spelling", {"penalty_per_word": 0.5, "max_penalty": 0.6}, "wrod wrod", None, -0.6),
    ("spelling", {}, "x = 3rd_valu + 2nd\n```\nfoo_barr = baz\n```", None, 0.0),
    ("writing_script", {"script": "Greek"}, "Καλημέρα κόσμε", None, 1.0),
    ("writing_script", {"script": "Arabic"}, "Hello world", None, 0.0),
    ("writing_script", {"answer_tag": "answer"}, "Думаю...<answer>Paris</answer>", None, 1.0),
    ("writing_script", {"script": "Hangul (Korean)", "min_share": 0.5}, "서울은 한국의 수도 Seoul", None, 1.0),
    ("answer_language", {"language": "Spanish"}, "La capital de España es Madrid.", None, 1.0),
    ("answer_language", {"language": "Spanish"}, "The capital of Spain is Madrid.", None, 0.0),
    ("answer_language", {"language": "Russian"}, "Столица России — Москва.", None, 1.0),
    ("answer_language", {"language": "Chinese"}, "中国的首都是北京。", None, 1.0),
    ("answer_language", {"language": "Japanese"}, "Beijing is the capital of China.", None, 0.0),
    ("answer_language", {"answer_tag": "answer"}, "Je pense...<answer>The answer is Paris.</answer>", None, 1.0),
    ("answer_language", {"answer_tag": "answer"}, "Voilà: <answer>7</answer>", None, None),
    ("python_tests", {}, "```py\ndef sq(x):\n    return x * x\n```", "assert sq(3) == 9", 1.0),
    ("python_tests", {}, "Here:\n```python\ndef sq(x): return x + x\n```", "assert sq(2) == 4\nassert sq(3) == 9", 0.5),
    ("python_tests", {"tests": "assert sq(4) == 16"}, "def sq(x): return x ** 2", None, 1.0),
    ("python_tests", {}, "import sys\nsys.exit(0)", "assert True", 0.0),
    ("custom_python", {"code": "return float(completion.count('!'))"}, "Wow!!", None, 2.0),
    ("custom_python", {"code": "def reward(prompt, completion, answer):\n    return -1"}, "x", None, -1.0),
    ("custom_python", {"code": "return len(prompt)"}, "x", None, 6.0),
    ("custom_python", {"code": "return 'high'"}, "x", None, None),
]


def test_hand_cases_cover_every_expected_template():
    covered = {c[0] for c in HAND_CASES}
    assert EXPECTED_TEMPLATES <= covered
    for name in EXPECTED_TEMPLATES:
        scores = [1.0 if c[4] == "high" else c[4] for c in HAND_CASES if c[0] == name and c[4] is not None]
        # At least one high and one low case for every template.
        assert max(scores) > min(scores), name


@pytest.mark.parametrize(
    "name,params,completion,answer,expected",
    HAND_CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(HAND_CASES)],
)
def test_hand_cases(name, params, completion, answer, expected):
    spec = get_template(name)
    got = spec.score_one(completion, answer, "prompt", **params)
    if expected == "high":  # model-based scores: clearly high, not an exact value
        assert got is not None and got >= 0.7, got
    else:
        assert approx_equal(got, expected), got


def test_batch_scoring_keeps_order_and_length():
    spec = get_template("numeric_match")
    got = spec.fn(["p"] * 4, ["1", "2", "x", "4"], ["1", "3", "5", None], **spec.validate_params({}))
    assert got == [1.0, 0.0, 0.0, None]


# ---------------------------------------------------------------------------
# Parameter validation
# ---------------------------------------------------------------------------


def test_validate_params_fills_defaults_and_coerces():
    spec = get_template("numeric_match")
    out = spec.validate_params({"tolerance": "0.01", "correct_score": 2})
    assert out["tolerance"] == 0.01 and isinstance(out["correct_score"], float)
    assert out["source"] == "auto"
    lt = get_template("length_target").validate_params({"target": 10.0, "tolerance": "5"})
    assert lt["target"] == 10 and isinstance(lt["target"], int) and lt["tolerance"] == 5
    kw = get_template("required_keywords").validate_params({"keywords": "a, b\nc", "ignore_case": "no"})
    assert kw["keywords"] == ["a", "b", "c"] and kw["ignore_case"] is False
    tags = get_template("answer_tags").validate_params({"answer_tag": "<final>"})
    assert tags["answer_tag"] == "final"


def test_validate_params_does_not_share_mutable_defaults():
    spec = get_template("json_valid")
    first = spec.validate_params({})
    first["required_keys"].append("x")
    assert spec.validate_params({})["required_keys"] == []


@pytest.mark.parametrize(
    "name,params,fragment",
    [
        ("numeric_match", {"tolerence": 0.1}, "Did you mean 'tolerance'"),
        ("numeric_match", {"tolerance": -1}, "at least 0"),
        ("numeric_match", {"tolerance": 5}, "at most 1"),
        ("numeric_match", {"tolerance": "lots"}, "must be a number"),
        ("numeric_match", {"source": "middle"}, "must be one of"),
        ("numeric_match", {"correct_score": True}, "must be a number"),
        ("numeric_match", {"tolerance": float("nan")}, "must be a number"),
        ("length_target", {"target": 2.5}, "whole number"),
        ("length_target", {"zzz": 1}, "Available settings"),
        ("answer_tags", {"mode": "loose"}, "strict, soft"),
        ("answer_tags", {"answer_tag": "my answer"}, "tag name"),
        ("answer_tags", {"reasoning_tag": ""}, "tag name"),
        ("exact_match", {"ignore_case": "maybe"}, "true or false"),
        ("required_keywords", {"keywords": [["nested"]]}, "text items"),
        ("required_keywords", {"keywords": 5}, "list of words"),
        ("regex_match", {"pattern": "([a-z"}, "not a valid regular expression"),
        ("regex_match", {"pattern": ""}, "empty"),
        ("reasoning_length", {"min_words": 50, "max_words": 10}, "must not be larger"),
    ],
)
def test_validate_params_rejects_bad_values_in_one_line(name, params, fragment):
    with pytest.raises(RewardError) as err:
        get_template(name).validate_params(params)
    assert fragment in one_line(err)


def test_validate_params_rejects_non_mapping():
    with pytest.raises(RewardError) as err:
        get_template("numeric_match").validate_params(["tolerance"])
    one_line(err)


def test_param_to_dict_is_plain_data():
    p = Param("n", "int", 3, "help", min=1, max=10)
    assert p.to_dict() == {"name": "n", "type": "int", "default": 3, "help": "help", "min": 1, "max": 10}


# ---------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,value",
    [
        ("42", 42.0),
        ("$1,234.50", 1234.5),
        ("42.", 42.0),
        ("-7", -7.0),
        ("−7", -7.0),
        ("3/4", 0.75),
        ("50%", 50.0),
        ("**18**", 18.0),
        ("1e3", 1000.0),
        ("", None),
        ("abc", None),
        ("nan", None),
        ("inf", None),
        ("1/0", None),
        ("12 apples", None),
        ("1" * 1000, None),
        (None, None),
        (True, None),
        (3, 3.0),
    ],
)
def test_parse_number(text, value):
    assert base.parse_number(text) == value


def test_last_number_and_all_numbers():
    assert base.last_number("Between 5-6 people, total 1,234.5 then 42.") == "42"
    assert base.last_number("range 5-6") == "6"
    assert base.last_number("x = -3") == "-3"
    assert base.last_number("no digits") is None
    assert base.all_numbers("3,4 and 12,345") == ["3", "4", "12,345"]


def test_extract_helpers():
    assert base.extract_tag("<a>1</a> <a>2</a>", "a") == "2"
    assert base.extract_tag("<a>1</a> <a>2</a>", "a", last=False) == "1"
    assert base.extract_tag("<a>1", "a") is None
    assert base.extract_boxed(r"\boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert base.extract_boxed(r"\boxed{unclosed") is None
    assert base.extract_hash_answer("work\n#### 1,000\n") == "1,000"
    assert base.reference_text("steps #### 72") == "72"
    assert base.reference_text("   ") is None


def test_normalize_text():
    assert base.normalize_text("  The  QUICK, brown fox! ") == "the quick brown fox"
    assert base.normalize_text("The fox", articles=True) == "fox"
    assert base.normalize_text("Café—olé!") == "café olé"
    assert base.normalize_text("a_b") == "a b"


def test_as_text_handles_chat_messages():
    msgs = [{"role": "assistant", "content": "hello"}]
    assert base.as_text(msgs) == "hello"
    assert base.as_text(None) == ""
    assert base.as_text(12) == "12"


# ---------------------------------------------------------------------------
# Robustness: any text, bounded time
# ---------------------------------------------------------------------------

PATHOLOGICAL = [
    "",
    " ",
    "\x00" * 100,
    "(" * 200_000,
    "1" * 100_000,
    "1," * 100_000,
    "-" * 50_000 + "1",
    "<think>" * 30_000,
    "<answer>" * 20_000 + "</answer>" * 20_000,
    "<think>" * 5_000 + "</think>" * 5_000 + "<answer>" * 5_000 + "</answer>" * 5_000,
    "\\boxed{" * 40_000,
    "{" * 100_000 + "}" * 100_000,
    "[" * 100_000,
    "```json\n" * 20_000,
    '{"a": ' * 50_000,
    "a " * 100_000,
    "a" * 200_000 + "!",
    "####" * 50_000,
    "\u202e\ud7ff\U0001F600 " * 40_000,
    "İ" * 100_000,
]


# Seconds one call may take. semantic_similarity runs a neural network over
# each text (cut to 256 tokens), which takes up to ~0.3 s per text on a slow CPU.
TIME_BUDGET_S = {"semantic_similarity": 5.0}


def _check_scores(spec: TemplateSpec, completions, answers, params=None):
    params = spec.validate_params(params or {})
    started = time.perf_counter()
    out = spec.fn(["prompt"] * len(completions), completions, answers, **params)
    elapsed = time.perf_counter() - started
    assert isinstance(out, list) and len(out) == len(completions)
    for v in out:
        assert v is None or (isinstance(v, float) and math.isfinite(v)), v
    assert elapsed < TIME_BUDGET_S.get(spec.name, 1.0), f"{spec.name} took {elapsed:.2f}s"
    return out


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_pathological_inputs(spec: TemplateSpec):
    for text in PATHOLOGICAL:
        _check_scores(spec, [text], [text[:50_000]])
        _check_scores(spec, [text, "ok"], ["42", None])


text_strategy = st.one_of(
    st.text(max_size=300),
    st.text(alphabet="<>/{}()[]#\\$,.-0123456789 thinkanswerboxed\n`\"':", max_size=300),
    st.sampled_from(PATHOLOGICAL),
)
answer_strategy = st.one_of(st.none(), st.text(max_size=40), st.integers(-10**6, 10**6).map(str))


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.lists(st.tuples(text_strategy, answer_strategy), min_size=0, max_size=3))
def test_any_text_scores_finite_quickly(spec: TemplateSpec, data):
    _check_scores(spec, [c for c, _ in data], [a for _, a in data])


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_examples_params_with_hostile_text(spec: TemplateSpec):
    # Non-default settings take other code paths; run each example's settings too.
    for ex in spec.examples:
        for text in PATHOLOGICAL[3:8]:
            _check_scores(spec, [text], [ex.answer], ex.params)


@pytest.mark.parametrize(
    "pattern,text",
    [(r"(a+)+$", "a" * 5_000 + "!"), (r"(a|aa)*b", "a" * 5_000), (r"\d+x", "1" * 100_000), (r"(.*a){20}", "a" * 200)],
)
def test_user_regex_cannot_hang(pattern, text):
    spec = get_template("regex_match")
    try:
        params = spec.validate_params({"pattern": pattern})
    except RewardError:
        return  # refusing a dangerous pattern up front is also acceptable
    started = time.perf_counter()
    assert spec.fn([""], [text], [None], **params) in ([0.0], [1.0])
    assert time.perf_counter() - started < 1.0


def test_user_regex_timeout_scores_zero():
    if base._user_re_engine is None:
        pytest.skip("the timeout-capable regex engine is not installed")
    spec = get_template("regex_match")
    params = spec.validate_params({"pattern": r"(x+x+)+y"})
    started = time.perf_counter()
    assert spec.fn([""], ["x" * 5_000], [None], **params) == [0.0]
    assert time.perf_counter() - started < 1.0


def test_user_regex_stdlib_fallback(monkeypatch):
    # Where the `regex` engine is missing, stdlib `re` is used on shorter text
    # and exponential shapes are refused when the reward is configured.
    monkeypatch.setattr(base, "_user_re_engine", None)
    spec = get_template("regex_match")
    with pytest.raises(RewardError) as err:
        spec.validate_params({"pattern": r"(a+)+$"})
    assert "(a+)+" in one_line(err)
    params = spec.validate_params({"pattern": r"\d+x"})
    started = time.perf_counter()
    assert spec.fn([""], ["1" * 100_000], [None], **params) == [0.0]
    assert time.perf_counter() - started < 1.0
    assert spec.score_one("Answer: 42", pattern=r"^Answer: \d+$") == 1.0


def test_non_string_inputs_do_not_crash():
    for spec in SPECS:
        out = spec.fn([None, 3], [None, 12345], [None, 7], **spec.validate_params({}))
        assert len(out) == 2


# ---------------------------------------------------------------------------
# RewardSet
# ---------------------------------------------------------------------------


def test_weighted_sum_by_hand():
    rs = RewardSet(
        [
            RewardTerm("numeric_match", weight=2.0),
            RewardTerm("tag_partial_credit", weight=0.5),
            RewardTerm("length_target", weight=-1.0, params={"unit": "characters", "target": 0, "tolerance": 0}),
        ]
    )
    completions = ["<think>x</think><answer>7</answer>", "<answer>8</answer>", ""]
    totals, per_term = rs.score(["q"] * 3, completions, ["7", "7", "7"])
    assert per_term["numeric_match"] == [1.0, 0.0, 0.0]
    assert per_term["tag_partial_credit"] == [1.0, 0.5, 0.0]
    assert per_term["length_target"] == [0.0, 0.0, 1.0]
    assert totals == pytest.approx([2.0 + 0.5, 0.25, -1.0])
    assert rs.names == ["numeric_match", "tag_partial_credit", "length_target"]
    assert rs.needs_answer == ["numeric_match"]
    assert rs.last_errors == []


def test_none_scores_add_nothing_but_stay_none():
    rs = RewardSet([RewardTerm("numeric_match", 1.0), RewardTerm("length_target", 0.5)])
    totals, per_term = rs.score(["q", "q"], ["42", "42"], [None, "not a number"])
    assert per_term["numeric_match"] == [None, None]
    assert totals == pytest.approx([0.5 * per_term["length_target"][0]] * 2)
    # answers may be omitted entirely
    totals, per_term = rs.score(None, ["42"], None)
    assert per_term["numeric_match"] == [None]


def test_duplicate_templates_get_suffixes_and_names_are_unique():
    rs = RewardSet.from_config(
        [
            {"template": "length_target"},
            {"template": "length_target", "params": {"target": 10}},
            {"template": "length_target", "name": "length_target_2"},
            {"template": "length_target"},
        ]
    )
    assert rs.names == ["length_target", "length_target_3", "length_target_2", "length_target_4"]
    with pytest.raises(RewardError) as err:
        RewardSet.from_config([{"template": "length_target", "name": "x"}, {"template": "banned_words", "name": "x"}])
    one_line(err)
    with pytest.raises(RewardError) as err:
        RewardSet.from_config([{"template": "length_target", "name": "total"}])
    one_line(err)


def test_config_round_trips_through_yaml():
    config = [
        {"template": "numeric_match", "weight": 1.0, "params": {"tolerance": 0.01}},
        {"template": "required_keywords", "weight": 0.3, "params": {"keywords": ["because", "so"]}, "name": "kw"},
        {"template": "numeric_match", "weight": 0.5},
        {"template": "regex_match", "weight": 1, "params": {"pattern": r"^\d+$"}},
    ]
    rs = RewardSet.from_config(config)
    dumped = yaml.safe_dump(rs.to_config())
    again = RewardSet.from_config(yaml.safe_load(dumped))
    assert again.to_config() == rs.to_config()
    assert again.names == ["numeric_match", "kw", "numeric_match_2", "regex_match"]
    comps, answers = ["12 because so", "<answer>3</answer>"], ["12", "3"]
    assert again.score(None, comps, answers) == rs.score(None, comps, answers)


@pytest.mark.parametrize(
    "config,fragment",
    [
        ([{"template": "numeric_mach"}], "Did you mean: numeric_match"),
        ([{"template": "no_such_thing_at_all"}], "Available templates"),
        ([{"template": "numeric_match", "params": {"tolerence": 1}}], "tolerance"),
        ([{"template": "numeric_match", "wieght": 1}], "Did you mean 'weight'"),
        ([{"template": "numeric_match", "weight": "heavy"}], "weight"),
        ([{"template": "numeric_match", "weight": float("inf")}], "weight"),
        ([{"weight": 1}], "no 'template'"),
        (["numeric_match"], "must be a mapping"),
        ({"template": "numeric_match"}, "must be a list"),
        ([{"template": "regex_match", "params": {"pattern": "(unclosed"}}], "not a valid regular expression"),
    ],
)
def test_bad_configs_give_one_line_errors(config, fragment):
    with pytest.raises(RewardError) as err:
        RewardSet.from_config(config)
    assert fragment in one_line(err)


def test_crashing_term_is_contained(monkeypatch):
    rs = RewardSet.from_config([{"template": "numeric_match"}, {"template": "length_target", "weight": 2.0}])
    spec = get_template("length_target")

    def boom(prompts, completions, answers, **params):
        raise RuntimeError("kaboom\nwith a second line")

    monkeypatch.setattr(spec, "fn", boom)
    totals, per_term = rs.score(["q"], ["5"], ["5"])
    assert per_term["length_target"] == [None]
    assert totals == [1.0]
    assert len(rs.last_errors) == 1 and "\n" not in rs.last_errors[0]
    assert "length_target" in rs.last_errors[0] and "kaboom" in rs.last_errors[0]

    monkeypatch.setattr(spec, "fn", lambda p, c, a, **kw: [float("nan")] * len(c))
    totals, per_term = rs.score(["q"], ["5"], ["5"])
    assert per_term["length_target"] == [None] and totals == [1.0]
    assert rs.last_errors

    monkeypatch.setattr(spec, "fn", lambda p, c, a, **kw: [1.0])
    totals, per_term = rs.score(["q", "q"], ["5", "6"], ["5", "5"])
    assert per_term["length_target"] == [None, None] and rs.last_errors

    # Errors are reset on the next clean call.
    monkeypatch.undo()
    rs.score(["q"], ["5"], ["5"])
    assert rs.last_errors == []


def test_mismatched_batch_lengths_are_rejected():
    rs = RewardSet.from_config([{"template": "numeric_match"}])
    with pytest.raises(RewardError) as err:
        rs.score(["q"], ["a", "b"], ["1", "2"])
    one_line(err)


def test_chat_format_and_non_string_answers():
    rs = RewardSet.from_config([{"template": "numeric_match"}, {"template": "json_valid", "params": {"required_keys": ["a"]}}])
    completions = [[{"role": "assistant", "content": '{"a": 42}'}]]
    totals, per_term = rs.score([[{"role": "user", "content": "q"}]], completions, [42])
    assert per_term == {"numeric_match": [1.0], "json_valid": [1.0]}
    totals, per_term = rs.score(None, ['{"a": 1}'], [{"a": 1}])
    assert per_term["numeric_match"] == [None]


def test_preview_rows():
    rs = RewardSet.from_config([{"template": "numeric_match"}, {"template": "tag_partial_credit", "weight": 0.25}])
    rows = preview(rs, ["q", "q"], ["<think>a</think><answer>3</answer>", "4"], ["3", "3"])
    assert [list(r) for r in rows] == [["completion", "numeric_match", "tag_partial_credit", "total"]] * 2
    assert rows[0]["total"] == pytest.approx(1.25)
    assert rows[1] == {"completion": "4", "numeric_match": 0.0, "tag_partial_credit": 0.0, "total": 0.0}


# ---------------------------------------------------------------------------
# Default sets
# ---------------------------------------------------------------------------


def test_default_sets_are_valid():
    for name, config in DEFAULT_SETS.items():
        rs = RewardSet.from_config(config)
        assert rs.names, name
        yaml.safe_dump(rs.to_config())


def test_default_reward_set_math():
    sample = [
        {"question": "Natalia sold clips...", "answer": "She sold 48/2 = 24 clips.\n#### 72"},
        {"question": "How much?", "answer": "$1,200"},
        {"question": "x?", "answer": "3.5"},
    ]
    rs = default_reward_set(sample)
    assert rs.preset == "math"
    assert rs.names[0] == "numeric_match"
    totals, _ = rs.score(None, ["<think>ok</think><answer>72</answer>"], ["#### 72"])
    assert totals == [pytest.approx(1.25)]


def test_default_reward_set_json():
    sample = [
        {"question": "Extract", "answer": '{"name": "Ada", "year": 1815}'},
        {"question": "Extract", "answer": {"name": "Alan", "year": 1912, "extra": 1}},
    ]
    rs = default_reward_set(sample)
    assert rs.preset == "json"
    json_term = next(t for t in rs.terms if t.template == "json_valid")
    assert json_term.params["required_keys"] == ["name", "year"]


def test_default_reward_set_short_answers_and_fallback():
    short = [{"question": "Capital of France?", "answer": "Paris"}, {"question": "Author?", "answer": "Jane Austen"}]
    assert default_reward_set(short).preset == "short_answer"
    assert default_reward_set([{"question": "Write a poem"}, {"question": "Tell a story", "answer": ""}]).preset == "open_ended"
    assert default_reward_set([]).preset == "open_ended"
    long_answers = [{"question": "Explain", "answer": " ".join(["word"] * 60)}]
    fallback = default_reward_set(long_answers)
    assert fallback.preset == "open_ended"
    assert {"length_target", "repetition_penalty"} <= {t.template for t in fallback.terms}
