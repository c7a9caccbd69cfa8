"""Settings errors in the page's language: every message of core.config has an English and a
German text; the studio names a setting by its label and a settings file by its name, and the
command line keeps English. Real settings files and the real config loader; no browser."""
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.config import ConfigError, RunConfig, apply_overrides
from core.events import read_events
from core.runs import RunManager
from studio import watch as w
from studio.errors import one_line, said_text, say
from studio.i18n import speaking

ROOT = Path(__file__).resolve().parent.parent
def test_a_hostile_settings_file_is_refused_in_the_page_language(tmp_path):
    upload = tmp_path / "gradio" / "3f2a9c" / "meine-einstellungen.yaml"
    upload.parent.mkdir(parents=True)
    upload.write_text("a: &x [1, 2]\nb: *x\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        RunConfig.load(upload)
    assert str(caught.value) == ("Settings files may not use YAML anchors or aliases (& and *). "
                                 "Line 1 has one.")  # the command line
    with speaking("de"):
        assert say(caught.value) == ("Einstellungsdateien dürfen keine YAML-Anker oder -Verweise "
                                     "(& und *) enthalten. Zeile 1 hat einen.")
    upload.write_text("grpo: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        RunConfig.load(upload)
    assert str(upload) in str(caught.value)
    with speaking("de"):
        shown = one_line(caught.value)
    assert shown.startswith("Die Einstellungsdatei meine-einstellungen.yaml ist kein gültiges YAML")
    assert "gradio" not in shown  # the studio's upload folder means nothing to the user


def test_settings_are_named_by_their_label(tmp_path):
    cfg = RunConfig()
    cfg.grpo.epsilon, cfg.grpo.epsilon_high = 0.2, 0.1
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_dict(cfg.to_dict())
    assert str(caught.value) == "grpo.epsilon_high must be at least grpo.epsilon."
    with speaking("de"):
        assert say(caught.value) == ("„Obere Begrenzung“ muss mindestens so groß sein wie "
                                     "„Begrenzung (Epsilon)“.")
    with speaking("en"):
        assert say(caught.value) == "Upper clip range must be at least Clip range (epsilon)."
    with pytest.raises(ConfigError) as caught:
        apply_overrides(RunConfig(), ["grpo.beta=1e999999"])
    with speaking("de"):
        assert say(caught.value) == ("„Nah am Original bleiben (Beta)“ muss eine endliche Zahl "
                                     "sein; angegeben war inf.")
    with pytest.raises(ConfigError) as caught:
        apply_overrides(RunConfig(), ["grpo.top_p=1.5"])
    assert str(caught.value) == "'grpo.top_p' must be at most 1.0; got 1.5."
    with speaking("de"):  # decimal commas
        assert say(caught.value).endswith("darf höchstens 1,0 sein; angegeben war 1,5."), \
            say(caught.value)
    with pytest.raises(ConfigError) as caught:
        apply_overrides(RunConfig(), ["train.seed=" + "9" * 40])
    with speaking("de"):
        assert re.search(r"angegeben war eine Zahl mit etwa 4\d Stellen\.$", say(caught.value))


def test_a_name_from_a_file_cannot_break_the_line(tmp_path):
    path = tmp_path / "einstellungen.yaml"
    path.write_text('grpo:\n  "x\\n\\n# Gewonnen!\\n\\n<img src=x>": 1\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        RunConfig.load(path)
    for lang in ("de", "en"):
        with speaking(lang):
            shown = one_line(caught.value)
        assert "\n" not in say(caught.value) and "# Gewonnen! <img src=x>" in shown, shown


def test_an_error_from_a_child_process_keeps_its_id():
    with pytest.raises(ConfigError) as caught:
        apply_overrides(RunConfig(), ["train.max_steps=-3"])
    again = pickle.loads(pickle.dumps(caught.value))
    assert (again.msg_id, again.params, str(again)) == \
        ("below_min", caught.value.params, str(caught.value))
    plain = ConfigError("A line written\nfor a beginner.")  # free text stays as it is
    assert (plain.msg_id, str(plain), say(plain)) == \
        (None, "A line written for a beginner.", "A line written for a beginner.")


def test_a_run_that_fails_in_its_worker_says_why_in_the_page_language(tmp_path, tiny_model_dir):
    """The worker (a real `python -m core train`) writes its error's id and values beside its
    English line; the run's status line and the runs list say it in the page's language."""
    empty = tmp_path / "leer.csv"
    empty.write_text("", encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "name": "leer", "model": {"source": str(tiny_model_dir), "precision": "32bit"},
        "data": {"source": str(empty)},
        "rewards": [{"template": "length_target", "params": {"target": 10}}],
        "train": {"max_steps": 1}}), encoding="utf-8")
    shown = {}
    for name, extra in (("data", []), ("settings", ["--set", "grpo.top_p=1.5"])):
        run_dir = tmp_path / name
        done = subprocess.run([sys.executable, "-m", "core", "train", str(config), "--run-dir",
                               str(run_dir), *extra], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 1, done.stderr[-2000:]
        watch = w.fold_events(w.new_watch(str(run_dir)), *read_events(run_dir))
        status = RunManager(tmp_path).status(run_dir)
        for lang in ("de", "en"):
            with speaking(lang):
                shown[name, lang] = (w.status_line(watch), said_text(status.said, status.error))
    assert shown["data", "en"] == ("❌ The file leer.csv is empty.", "The file leer.csv is empty.")
    assert shown["data", "de"] == ("❌ Die Datei leer.csv ist leer.", "Die Datei leer.csv ist leer.")
    assert shown["settings", "en"][1] == \
        "'Top-p (likeliest words only)' must be at most 1.0; got 1.5."
    assert shown["settings", "de"][0].startswith("❌ „Top-p") and \
        shown["settings", "de"][0].endswith("darf höchstens 1,0 sein; angegeben war 1,5."), shown
