"""Hostile or mistaken settings: every one is refused quickly, with one plain line, never a traceback.

Real files in tmp_path, the real loader: `RunConfig.load`, `RunConfig.from_dict`, `apply_overrides`.
"""
import dataclasses
import os
import time
from pathlib import Path

import pytest

from core.config import (
    MAX_INT,
    MAX_SETTINGS_BYTES,
    ConfigError,
    DataConfig,
    GenerationConfig,
    GRPOConfig,
    ModelConfig,
    RewardConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
)

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = "Settings files may not use YAML anchors or aliases (& and *)."


def write(tmp_path, text, name="settings.yaml"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


def load_error(tmp_path, text) -> str:
    return error_of(RunConfig.load, write(tmp_path, text))


def billion_laughs() -> str:
    """Nine levels of nine aliases each: about 400 bytes that would expand to 9**9 strings."""
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    body = "\n".join("    " + line for line in lines)
    return f"rewards:\n- template: numeric_match\n  params:\n{body}\n    x: *i\n"


# ---------------------------------------------------------------- YAML anchors, size, depth

def test_the_alias_bomb_is_refused_while_parsing(tmp_path):
    text = billion_laughs()
    assert len(text) < 500
    start = time.monotonic()
    message = load_error(tmp_path, text)
    assert time.monotonic() - start < 1
    assert message.startswith(ANCHORS)


@pytest.mark.parametrize("text", [
    "name: &n demo\n",                                    # an anchor alone, never used
    "train: &t {max_steps: 3}\ngrpo: {}\n",
    "rewards:\n- &r {template: numeric_match}\n- *r\n",
    "base: &b {max_steps: 3}\ntrain:\n  <<: *b\n",        # merge keys need aliases too
])
def test_any_anchor_or_alias_is_refused(tmp_path, text):
    assert load_error(tmp_path, text).startswith(ANCHORS)


def test_anchors_are_refused_in_overrides_too():
    cfg = RunConfig()
    assert error_of(apply_overrides, cfg, ["train.max_steps=&a 5"]).startswith(ANCHORS)
    assert error_of(apply_overrides, cfg, ["rewards=[&r {template: x}, *r]"]).startswith(ANCHORS)


def test_big_settings_files_are_refused_before_parsing(tmp_path):
    text = "name: big\n" + "# padding\n" * (MAX_SETTINGS_BYTES // 10)
    start = time.monotonic()
    message = load_error(tmp_path, text)
    assert time.monotonic() - start < 1
    assert "larger than 256 KB" in message
    assert RunConfig.load(write(tmp_path, "name: big\n" + "# padding\n" * 1000)).name == "big"


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_an_endless_file_is_read_only_up_to_the_limit():
    assert "larger than 256 KB" in error_of(RunConfig.load, "/dev/zero")


def test_deep_nesting_is_refused(tmp_path):
    assert "nested at most 16 levels" in load_error(tmp_path, "train: " + "[" * 5000 + "]" * 5000 + "\n")
    params = "{a: " * 30 + "1" + "}" * 30
    assert "nested at most 16 levels" in load_error(
        tmp_path, f"rewards: [{{template: numeric_match, params: {params}}}]\n")


# ---------------------------------------------------------------- numbers

@pytest.mark.parametrize("value,shown", [(".nan", "nan"), (".NaN", "nan"), (".inf", "inf"),
                                         ("-.inf", "-inf"), ("1.0e+400", "inf")])
def test_non_finite_numbers_are_refused_naming_the_setting(tmp_path, value, shown):
    message = load_error(tmp_path, f"train:\n  learning_rate: {value}\n")
    assert message == f"'train.learning_rate' must be a finite number; got {shown}."
    assert error_of(apply_overrides, RunConfig(), [f"grpo.temperature={value}"]) == \
        f"'grpo.temperature' must be a finite number; got {shown}."
    assert error_of(apply_overrides, RunConfig(), [f"train.max_steps={value}"]) == \
        f"'train.max_steps' must be a finite number; got {shown}."


def test_nan_is_refused_even_where_there_are_no_bounds_to_compare():
    for section, name in (("grpo", "epsilon_high"), ("model", "lora_dropout"), ("data", "eval_share")):
        message = error_of(RunConfig.from_dict, {section: {name: float("nan")}})
        assert message == f"'{section}.{name}' must be a finite number; got nan."


@pytest.mark.parametrize("setting,value,expected", [
    ("train.max_steps", 10**30,
     "'train.max_steps' must be at most 1000000; got 1000000000000000000000000000000."),
    ("train.seed", 10**30, "'train.seed' must be at most 4294967295; got 1000000000000000000000000000000."),
    ("train.seed", 2**64 + 1, "'train.seed' must be at most 4294967295; got 18446744073709551617."),
    ("train.seed", -1, "'train.seed' must be at least 0; got -1."),
    ("data.max_rows", 10**10, "'data.max_rows' must be at most 1000000000; got 10000000000."),
    ("train.save_steps", 10**20, "'train.save_steps' must be at most 1000000; got 100000000000000000000."),
    ("train.sample_every", 10**20, "'train.sample_every' must be at most 1000000; got 100000000000000000000."),
    ("train.threads", 10**20, "'train.threads' must be at most 4096; got 100000000000000000000."),
    ("generation.max_batch_size", 10**20,
     "'generation.max_batch_size' must be at most 65536; got 100000000000000000000."),
])
def test_huge_whole_numbers_are_refused(tmp_path, setting, value, expected):
    section, name = setting.split(".")
    assert load_error(tmp_path, f"{section}:\n  {name}: {value}\n") == expected
    assert error_of(apply_overrides, RunConfig(), [f"{setting}={value}"]) == expected


def test_a_number_with_thousands_of_digits_is_one_line(tmp_path):
    assert "too many digits" in load_error(tmp_path, "train:\n  seed: " + "9" * 5000 + "\n")
    assert "about 101 digits" in error_of(RunConfig.from_dict, {"train": {"max_steps": 10**100}})


def test_every_whole_number_setting_has_bounds_the_browser_can_carry():
    for section in (ModelConfig, DataConfig, GRPOConfig, TrainConfig, GenerationConfig, RewardConfig):
        for f in dataclasses.fields(section):
            if str(f.type).startswith("int"):
                lo, hi = f.metadata["min"], f.metadata["max"]
                assert lo is not None and hi is not None, f"{section.__name__}.{f.name}"
                assert -MAX_INT <= lo <= hi <= MAX_INT, f"{section.__name__}.{f.name}"


def test_bounds_still_accept_their_edges():
    cfg = RunConfig.from_dict({"train": {"seed": 2**32 - 1, "max_steps": 1_000_000, "save_steps": 0},
                               "data": {"max_rows": 10**9}})
    assert (cfg.train.seed, cfg.train.max_steps, cfg.data.max_rows) == (2**32 - 1, 1_000_000, 10**9)


# ---------------------------------------------------------------- reward params

def reward_error(tmp_path, params: str) -> str:
    return load_error(tmp_path, f"rewards:\n- template: numeric_match\n  params: {params}\n")


def test_reward_params_are_bounded(tmp_path):
    assert reward_error(tmp_path, "{tolerance: .nan}") == \
        "'rewards[0].params.tolerance' must be a finite number; got nan."
    assert reward_error(tmp_path, "{a: [1, {b: -.inf}]}") == \
        "'rewards[0].params.a[1].b' must be a finite number; got -inf."
    assert reward_error(tmp_path, "{n: 100000000000000000000}").startswith(
        "'rewards[0].params.n' is too large a number")
    assert reward_error(tmp_path, "{pattern: '" + "x" * 20_001 + "'}") == \
        "'rewards[0].params.pattern' is too long (20001 characters; at most 20000)."
    assert reward_error(tmp_path, "{1: x}") == "Parameter names in 'rewards[0].params' must be text; got 1."
    assert reward_error(tmp_path, "{when: 2001-01-01}").startswith(
        "'rewards[0].params.when' must be text, a number, true/false, a list or a mapping")
    assert "more than 10000 values" in reward_error(tmp_path, "{xs: [" + ",".join(["0"] * 10_001) + "]}")
    assert "should be a mapping of parameters" in reward_error(tmp_path, "[1, 2]")


def test_params_built_in_code_are_bounded_too():
    looped = {}
    looped["self"] = looped
    assert "nested more than 16 levels" in error_of(
        RunConfig.from_dict, {"rewards": [{"template": "numeric_match", "params": looped}]})
    shared = ["x"] * 9
    for _ in range(8):  # the alias bomb, as Python objects sharing references
        shared = [shared] * 9
    start = time.monotonic()
    bomb = {"rewards": [{"template": "numeric_match", "params": {"x": shared}}]}
    message = error_of(RunConfig.from_dict, bomb)
    assert "more than 10000 values" in message and time.monotonic() - start < 1


# ---------------------------------------------------------------- anything else: one line

@pytest.mark.parametrize("content,expected", [
    (b"\xff\xfe\x00garbage\x81", "isn't UTF-8 text"),
    ("- just\n- a list\n", "must hold a mapping"),
    ("name: a\n---\nname: b\n", "not valid YAML"),
    ("name: !!python/object:os.system {}\n", "not valid YAML"),
    ("name: [unclosed\n", "not valid YAML (line 2)"),
    ("1: x\nfoo: y\n", "Unknown setting '1'"),
    ("rewards: {a: 1}\n", "'rewards' must be a list"),
    ("rewards: [5]\n", "'rewards[0]' must be a mapping"),
    ("rewards: [" + ", ".join(["{template: x}"] * 101) + "]\n", "at most 100 are supported"),
    ("model: {target_modules: {a: 1}}\n", "'model.target_modules' should be a word or a list of names"),
    ("model: {target_modules: [" + ", ".join(["q"] * 1001) + "]}\n", "at most 1000 are supported"),
    ("data: {system_prompt: '" + "p" * 100_001 + "'}\n", "is too long (100001 characters"),
    ("train: {learning_rate: [1, 2]}\n", "should be a number"),
    ("train: 5\n", "'train' must be a mapping"),
    ("grpo:\n  loss_type: .nan\n", "must be one of"),
])
def test_hostile_files_each_get_one_line(tmp_path, content, expected):
    assert expected in load_error(tmp_path, content)


def test_unreadable_paths_get_one_line(tmp_path):
    assert "not found" in error_of(RunConfig.load, tmp_path / "missing.yaml")
    assert "is a folder" in error_of(RunConfig.load, tmp_path)


def test_bad_overrides_get_one_line():
    cfg = RunConfig()
    assert "should look like section.key=value" in error_of(apply_overrides, cfg, ["train.max_steps"])
    assert "Unknown setting" in error_of(apply_overrides, cfg, ["nope.deeper.key=1"])
    assert "is too long" in error_of(apply_overrides, cfg, ["name=" + "x" * (MAX_SETTINGS_BYTES + 1)])
    assert "not valid YAML" in error_of(apply_overrides, cfg, ["name=[unclosed"])


# ---------------------------------------------------------------- valid settings are unchanged

def test_valid_settings_load_exactly_as_written(tmp_path):
    text = """\
name: careful
model: {lora_r: 8, target_modules: [q_proj, v_proj]}
data: {source: qa.csv, max_rows: 500, system_prompt: "Answer with * and & signs, as in a*b & c."}
rewards:
- template: regex_match
  weight: 0.5
  params: {pattern: "^(\\\\d+)\\\\*?$", tolerance: 0.01, choices: [1, 2.5, "x", null, true], nested: {k: [a, b]}}
train: {learning_rate: 3.0e-5, seed: 0, max_steps: 1000000, save_steps: 0}
grpo: {temperature: 0.7, epsilon_high: 0.28}
"""
    cfg = RunConfig.load(write(tmp_path, text))
    assert cfg.model.target_modules == ["q_proj", "v_proj"] and cfg.model.lora_r == 8
    assert cfg.data.system_prompt == "Answer with * and & signs, as in a*b & c." and cfg.data.max_rows == 500
    assert cfg.rewards == [RewardConfig(template="regex_match", weight=0.5, params={
        "pattern": "^(\\d+)\\*?$", "tolerance": 0.01, "choices": [1, 2.5, "x", None, True],
        "nested": {"k": ["a", "b"]}})]
    assert (cfg.train.learning_rate, cfg.train.seed, cfg.train.max_steps) == (3e-5, 0, 1_000_000)
    assert (cfg.grpo.temperature, cfg.grpo.epsilon_high) == (0.7, 0.28)
    again = tmp_path / "again.yaml"
    cfg.save(again)
    assert RunConfig.load(again) == cfg


def test_the_examples_and_a_saved_default_round_trip(tmp_path):
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        cfg = RunConfig.load(example)
        assert RunConfig.from_dict(cfg.to_dict()) == cfg, example.name
    RunConfig().save(tmp_path / "default.yaml")
    assert RunConfig.load(tmp_path / "default.yaml") == RunConfig()
    cfg = apply_overrides(RunConfig(), ["train.seed=7", "grpo.temperature=0.5",
                                        "model.target_modules=[q_proj]"])
    assert (cfg.train.seed, cfg.grpo.temperature, cfg.model.target_modules) == (7, 0.5, ["q_proj"])
