"""The form kept between visits (studio/draft.py) and what a preset would change: a draft
round-trips, a damaged or hostile file is ignored, and only values a widget can show return."""
import json

import gradio as gr

from studio.app import restorable
from studio.draft import DRAFT_FILE, MAX_DRAFT_BYTES, load_draft, save_draft
from studio.form import describe_changes

NAMES = ["name", "model.lora_r", "grpo.temperature", "model.precision", "data.max_rows",
         "data.answer_column", "train.report_to", "studio.steps", "studio.model_preset"]


def test_draft_round_trips_only_the_names_asked_for(tmp_path):
    fields = {"name": "my-run", "model.lora_r": 8, "grpo.temperature": 0.9,
              "model.precision": "4bit", "data.max_rows": "", "data.answer_column": "Antwort",
              "studio.steps": 40, "unknown.field": "x"}
    rewards = [{"template": "numeric_match", "weight": 1.0, "params": {"tolerance": 0}}]
    save_draft(tmp_path, fields, rewards)
    back, rs = load_draft(tmp_path, NAMES)
    assert back == {k: v for k, v in fields.items() if k in NAMES}
    assert rs == rewards
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, no leftovers
    save_draft(tmp_path, {"name": "again"}, [])  # a second save replaces the first
    assert load_draft(tmp_path, NAMES)[0] == {"name": "again"}
    assert not list(tmp_path.glob(".*tmp"))


def test_damaged_or_hostile_drafts_are_ignored(tmp_path):
    path = tmp_path / DRAFT_FILE
    assert load_draft(tmp_path, NAMES) is None  # none yet
    for text in ("{half", "[]", json.dumps({"version": 99, "fields": {"name": "x"}}),
                 "x" * (MAX_DRAFT_BYTES + 1)):
        path.write_text(text)
        assert load_draft(tmp_path, NAMES) is None
    path.write_text(json.dumps({"version": 1, "fields": {
        "name": {"nested": ["deep"]}, "model.lora_r": 2 ** 60,
        "grpo.temperature": "0.7"}, "rewards": [{"no": "template"}, "text", {"template": "x"}]}))
    fields, rewards = load_draft(tmp_path, NAMES)
    assert fields["model.lora_r"] is None  # beyond what a browser can hold: dropped
    assert rewards == [{"template": "x"}]


def test_only_values_a_widget_can_show_come_back():
    skip = gr.skip()
    assert restorable("model.precision", "4bit") == "4bit"
    assert restorable("model.precision", "3bit") == skip  # not a choice
    assert restorable("model.lora_r", "8") == skip        # a number box takes numbers only
    assert restorable("model.lora_r", True) == skip
    assert restorable("model.lora_r", 8) == 8
    assert restorable("data.max_rows", "100") == "100"     # optional numbers are text boxes
    assert restorable("studio.model_preset", "/etc") == skip
    assert restorable("studio.model_preset", "default") == "default"
    assert restorable("no.such.field", 1) == skip
    assert restorable("model.gradient_checkpointing", "yes") == skip
    # within each setting's range and each slider's: out of range, a widget would refuse it
    assert restorable("model.lora_r", -5) == skip
    assert restorable("studio.quality", -3) == skip
    assert restorable("studio.steps", 100_000) == skip
    assert restorable("studio.steps", 40) == 40


def test_a_preset_lists_what_it_would_change():
    paths = ["name", "train.learning_rate", "grpo.num_generations", "data.system_prompt"]
    old = ["my-run", 0.0003, 8, ""]
    new = ["classroom-demo", 0.0002, 8.0, "Answer briefly."]
    ours = [{"template": "numeric_match", "weight": 1.0, "params": {}},
            {"template": "spelling", "weight": 0.5, "params": {}}]
    demo = [{"template": "numeric_match", "weight": 1.0, "params": {}}]
    lines = describe_changes(paths, old, new, ours, demo)
    assert lines[0] == "Rewards: Right number ×1, Spelling ×0.5 → Right number ×1"
    assert "Run name (`name`): my-run → classroom-demo" in lines
    assert any(line.startswith("Learning rate") and "0.0003 → 0.0002" in line for line in lines)
    assert any("(empty) → Answer briefly." in line for line in lines)
    assert not any("Answers per question" in line for line in lines)  # 8 and 8.0: the same
    assert describe_changes(paths, new, new, demo, demo) == []


def test_a_preset_names_each_reward_setting_it_would_change():
    """The same rewards and weights with other settings: each setting is named (the page once
    said "Rewards: length_target ×0.5 → length_target ×0.5" and changed a target of 50 to 3)."""
    from studio.i18n import speaking
    ours = [{"template": "numeric_match", "weight": 1.0,
             "params": {"partial_credit_for_number": 0.0}},
            {"template": "length_target", "weight": 0.5,
             "params": {"unit": "words", "target": 50, "tolerance": 20}}]
    demo = [{"template": "numeric_match", "weight": 1.0,
             "params": {"partial_credit_for_number": 0.1}},
            {"template": "length_target", "weight": 0.5,
             "params": {"unit": "words", "target": 3, "tolerance": 3}}]
    assert describe_changes([], [], [], ours, demo) == [
        "Reward “Right number”, Reward for giving any number: 0.0 → 0.1",
        "Reward “Length near a target”, Target length: 50 → 3",
        "Reward “Length near a target”, Tolerance: 20 → 3"]
    with speaking("de"):
        assert describe_changes([], [], [], ours, demo)[1] == \
            "Belohnung „Länge nahe am Ziel“, Ziellänge: 50 → 3"
    # a settings file names only what it changes: the defaults it leaves out are no change
    shown = [{"template": "length_target", "weight": 0.5,
              "params": {"unit": "words", "target": 3, "tolerance": 3}}]
    assert describe_changes([], [], [], shown, [dict(shown[0], params={"target": 3,
                                                                        "tolerance": 3})]) == []


def test_preset_changes_speak_the_page_language_and_name_choices_in_words():
    from studio.i18n import speaking
    paths = ["model.precision", "model.gradient_checkpointing", "data.system_prompt"]
    old, new = ["16bit", True, ""], ["4bit", False, "Kurz antworten."]
    lines = describe_changes(paths, old, new, [], [{"template": "numeric_match", "weight": 1}])
    assert lines[0] == "Rewards: none → Right number ×1"
    assert "16-bit → 4-bit (least memory)" in lines[1] and lines[2].endswith(": on → off")
    with speaking("de"):
        lines = describe_changes(paths, old, new, [], [{"template": "numeric_match", "weight": 1}])
    assert lines[0] == "Belohnungen: keine → Richtige Zahl ×1"
    assert lines[1].startswith("Genauigkeit des Basismodells (`model.precision`): 16-Bit → 4-Bit")
    assert lines[2].endswith(": an → aus") and lines[3].endswith("(leer) → Kurz antworten.")
