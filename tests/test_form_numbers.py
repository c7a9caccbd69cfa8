"""Numbers in the form without a browser: a box with a range never fails the event that reads
it (Gradio's own check would, in English, for any button), a number outside is brought inside
and said in one line in the page's language; reward weights and settings name the actual
problem and the value that stays; the "Try it" table names rewards in words."""
import gradio as gr
import pytest

from reward_templates import RewardError
from studio.form import (bounded_number, bounded_slider, make_widget, number_in_range,
                         range_message)
from studio.i18n import L, speaking, t
from studio.step_rewards import (add_reward, score_table, score_widths, set_param, set_weight,
                                 summary)


@pytest.mark.parametrize("value, expected", [
    (600, 512), (99999999999, 512), (-5, 1), (16, 16), (float("inf"), 512), ("700", 512),
    ("8", 8.0), (None, None), ("abc", None), (float("nan"), None), (True, None), ([3], None)])
def test_a_number_is_brought_into_its_range(value, expected):
    assert number_in_range(value, 1, 512) == expected


def test_the_line_names_the_setting_and_the_range_in_the_page_language():
    with speaking("en"):
        line = range_message(t("settings.model.lora_r.label"), 1, 512, 512)
    assert line == "LoRA rank (adapter size) must be between 1 and 512; it is now 512."
    with speaking("de"):
        line = range_message(t("settings.train.learning_rate.label"), 0.0, 1.0, 1.0)
    assert line.startswith(t("settings.train.learning_rate.label", "de") + " muss zwischen 0 und 1")
    assert "1e+" not in line and "Traceback" not in line


def test_settings_boxes_keep_their_range_but_never_fail_an_event():
    with gr.Blocks():
        rank = make_widget("model.lora_r", 16)
        rate = make_widget("train.learning_rate", 1e-4)
    # the page still shows the range (the browser's arrows stop there) and Gradio's own box
    assert (rank.minimum, rank.maximum) == (1, 512) and rate.maximum == 1.0
    assert rank.get_block_name() == "number"
    # what any handler taking them as input receives: a number inside, never Gradio's error
    assert rank.preprocess(600) == 512 and rank.preprocess(99999999999) == 512
    assert rank.preprocess(0) == 1 and isinstance(rank.preprocess(7.6), int)
    assert rate.preprocess(1e308) == 1.0 and rate.preprocess(-1) == 0.0
    assert rate.preprocess(None) is None
    with pytest.raises(gr.Error, match="greater than maximum"):  # what the plain box does
        gr.Number(minimum=1, maximum=512).preprocess(600)


def test_a_bounded_slider_never_fails_an_event_either():
    with gr.Blocks():
        steps = bounded_slider(1, 500, 40, step=1, label=L("train.steps.label"),
                               info=L("train.steps.info"))
        box = bounded_number(3, minimum=0, maximum=10, label=L("rewards.try.questions"))
    assert steps.get_block_name() == "slider" and steps.maximum == 500
    assert steps.preprocess(99999999999) == 500 and steps.preprocess(-3) == 1
    assert steps.preprocess(12) == 12
    assert box.preprocess(11) == 10
    with pytest.raises(gr.Error):
        gr.Slider(1, 500).preprocess(99999999999)


def test_a_weight_has_a_range_and_a_negative_one_is_said_in_words():
    rs = add_reward([], "length_target", 1.0, "{}")
    with speaking("en"), pytest.raises(RewardError) as caught:
        set_weight(rs, 0, 99999999999999999999999)
    assert str(caught.value) == "The weight must be from -100 to 100. It stays at 1."
    with speaking("de"), pytest.raises(RewardError, match="von -100 bis 100.*bleibt bei 1"):
        set_weight(rs, 0, 101)
    with pytest.raises(RewardError, match="must be a number.*It stays at 1"):
        set_weight(rs, 0, "lots")
    negative = set_weight(rs, 0, -3)
    assert negative[0]["weight"] == -3.0
    with speaking("en"):
        line = summary(negative)
    assert line.startswith("**An answer's score:** -3 × Length near a target.")
    assert "A negative weight makes “Length near a target” a penalty" in line
    with speaking("de"):
        assert "Ein negatives Gewicht macht „Länge nahe am Ziel“ zur Strafe" in summary(negative)
    assert "negative weight" not in summary(rs)


def test_a_setting_outside_its_range_is_not_called_not_a_whole_number():
    rs = add_reward([], "length_target", 1.0, "{}")
    with speaking("en"), pytest.raises(RewardError) as caught:
        set_param(rs, 0, "target", 99999999)
    assert str(caught.value) == "“Target length” must be from 0 to 100000. It stays at 50."
    with speaking("en"), pytest.raises(RewardError) as caught:
        set_param(rs, 0, "target", 2.5)
    assert "whole number from 0 to 100000" in str(caught.value)
    with speaking("de"), pytest.raises(RewardError, match="muss von 0 bis 100000 sein"):
        set_param(rs, 0, "target", -1)
    assert set_param(rs, 0, "target", 30)[0]["params"]["target"] == 30


def test_the_try_table_names_each_reward_in_words():
    rs = [{"template": "numeric_match", "weight": 1.0, "params": {}},
          {"template": "length_target", "weight": 0.5, "params": {"target": 1}},
          {"template": "length_target", "weight": 0.5, "params": {"target": 9}}]
    with speaking("de"):
        table = score_table(rs, ["2+2?"], ["4"], [["4", "fünf"]])
    assert table["headers"] == ["Frage", "Antwort des Modells", "Richtige Zahl",
                                "Länge nahe am Ziel 1", "Länge nahe am Ziel 2", "Summe"]
    assert len(table["data"]) == 2 and table["data"][0][2] == 1.0
    named = [dict(rs[0], name="my check")]
    with speaking("en"):
        assert score_table(named, ["2+2?"], ["4"], [["4"]])["headers"][2] == "my check"
    for n in range(1, 9):  # the question and answer share what the scores leave
        widths = [float(w.rstrip("%")) for w in score_widths(n)]
        assert len(widths) == n + 3 and sum(widths) <= 100.5 and widths[1] > widths[2]


def test_the_teachers_limits_never_fail_save_either(tmp_path):
    from studio import step_classroom
    from studio.access import Policy
    with gr.Blocks():
        ui = step_classroom.build(Policy("classroom", tmp_path / "runs"))
    boxes = [box for key, box in ui["fields"].items() if key != "allowed_models"]
    assert boxes and all(box.preprocess(1e12) == 1_000_000 and box.preprocess(-3) == 0
                         for box in boxes)
