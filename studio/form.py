"""The run config as a form: one widget per `RunConfig` field, built from the field's metadata.

The wizard keeps no config object of its own. Every step registers its widgets under the dotted
config path they edit (`grpo.beta`, `data.source`, ...); building a config is reading those
values back (`config_from_values`), loading one is the reverse (`values_from_config`). Rewards are
a list of plain dicts kept in a `gr.State`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from core.config import ConfigError, RunConfig

from .i18n import t

SECTIONS = ("model", "data", "grpo", "train", "generation")


def field_of(path: str) -> dataclasses.Field:
    """The dataclass field behind a dotted path such as 'grpo.beta' or 'name'."""
    cls = RunConfig
    *parents, leaf = path.split(".")
    for part in parents:
        cls = type(getattr(RunConfig(), part))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if leaf not in fields:
        raise KeyError(path)
    return fields[leaf]


def section_paths(section: str) -> list[str]:
    cls = type(getattr(RunConfig(), section))
    return [f"{section}.{f.name}" for f in dataclasses.fields(cls)]


def kind_of(path: str) -> str:
    """'bool' | 'int' | 'float' | 'choice' | 'text' (what widget edits the field)."""
    f = field_of(path)
    if f.metadata.get("choices"):
        return "choice"
    t = str(f.type)
    for kind in ("bool", "int", "float"):
        if t.startswith(kind):
            return kind
    return "text"


def optional(path: str) -> bool:
    return "None" in str(field_of(path).type)


def get_value(cfg: RunConfig, path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        node = getattr(node, part)
    return node


def widget_value(cfg: RunConfig, path: str) -> Any:
    """The value a widget shows for a config field (lists become comma-separated text, optional
    numbers text, empty when unset)."""
    value = get_value(cfg, path)
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if value is None and (kind_of(path) == "text" or optional(path)):
        return ""
    if optional(path) and kind_of(path) in ("int", "float"):
        return str(value)
    return value


def values_from_config(cfg: RunConfig, paths: list[str]) -> list[Any]:
    return [widget_value(cfg, p) for p in paths]


def _from_widget(path: str, value: Any) -> Any:
    kind = kind_of(path)
    if isinstance(value, str):
        value = value.strip()
    if value in ("", None):
        if optional(path):
            return None
        if kind == "text":
            return ""
        raise ConfigError(t("form.error.needs_value", label=label_of(path), path=path))
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind in ("int", "float") and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(t("form.error.not_a_number", label=label_of(path), path=path,
                                value=_shown(value))) from None
        return int(number) if kind == "int" and number.is_integer() else number
    if path == "model.target_modules" and isinstance(value, str) and "," in value:
        return [part.strip() for part in value.split(",") if part.strip()]
    if path == "train.report_to" and isinstance(value, str):  # "tensorboard, wandb"
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def config_dict_from_values(paths: list[str], values: list[Any],
                            rewards: list[dict] | None = None) -> dict:
    data: dict = {}
    for path, value in zip(paths, values):
        node = data
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _from_widget(path, value)
    if rewards is not None:
        data["rewards"] = [clean_reward(r) for r in rewards]
    return data


def config_from_values(paths: list[str], values: list[Any],
                       rewards: list[dict] | None = None) -> RunConfig:
    """A validated RunConfig from the widgets' values; raises ConfigError (one line)."""
    return RunConfig.from_dict(config_dict_from_values(paths, values, rewards))


def clean_reward(item: dict) -> dict:
    out = {"template": str(item.get("template", "")), "weight": item.get("weight", 1.0),
           "params": dict(item.get("params") or {})}
    if item.get("name"):
        out["name"] = item["name"]
    return out


def rewards_from_config(cfg: RunConfig) -> list[dict]:
    return [clean_reward(dataclasses.asdict(r)) for r in cfg.rewards]


def cli_command(config_path: str, run_dir: str, processes: int = 1) -> str:
    """The command line that trains the same run headless (on several processes: accelerate
    launch, docs/SCALING.md)."""
    if processes > 1:
        return (f"accelerate launch --multi_gpu --num_processes {processes} -m core train "
                f"{config_path} --run-dir {run_dir}")
    return f"python -m core train {config_path} --run-dir {run_dir}"


# ---- widgets ---------------------------------------------------------------------------

def label_of(path: str) -> str:
    """A setting's name in plain words, in the page's language."""
    return t(f"settings.{path}.label")


def make_widget(path: str, value: Any = None, **kwargs):
    """A Gradio widget for one config field: bounds, choices and help from its metadata."""
    import gradio as gr

    from .i18n import L

    f = field_of(path)
    meta = f.metadata
    kind = kind_of(path)
    lo, hi = meta.get("min"), meta.get("max")
    # the help with the allowed range, in the page's language (settings_info below)
    common = dict(label=L(f"settings.{path}.label"), info=L(f"settings.{path}.info"),
                  elem_id="knob-" + path.replace(".", "-"))
    common.update(kwargs)
    if kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if kind == "choice":
        return gr.Dropdown(choices=[(L(f"settings.{path}.choice.{c}"), c) for c in meta["choices"]],
                           value=value, **common)
    if kind in ("int", "float") and not optional(path):
        # RunConfig says what is wrong in one line; the box's own bounds stop absurd numbers
        # (above 2^53 a browser cannot even hold them) before any handler runs.
        return gr.Number(value=value, precision=0 if kind == "int" else None,
                         minimum=lo, maximum=hi if hi is not None else 2 ** 53 - 1, **common)
    # optional numbers are text: empty means "automatic", which a number box cannot show
    return gr.Textbox(value="" if value is None else str(value) if kind != "text" else value,
                      lines=1, placeholder=L("settings.automatic") if optional(path) else None,
                      **common)


def settings_info(texts: dict[str, str]) -> dict[str, str]:
    """`settings.<path>.info` for every setting with help in `texts` (one language's catalog):
    the help, then the allowed range in that language's words."""
    out = {}
    for key, help_text in texts.items():
        if not (key.startswith("settings.") and key.endswith(".help")):
            continue
        path = key[len("settings."):-len(".help")]
        try:
            meta = field_of(path).metadata
        except (KeyError, AttributeError):
            continue
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and hi is not None:
            bounds = texts["settings.range.between"].format(lo=number_words(lo), hi=number_words(hi))
        elif lo is not None:
            bounds = texts["settings.range.at_least"].format(lo=number_words(lo))
        elif hi is not None:
            bounds = texts["settings.range.at_most"].format(hi=number_words(hi))
        else:
            bounds = ""
        out[f"settings.{path}.info"] = f"{help_text} ({bounds})" if bounds else help_text
    return out


def number_words(x) -> str:
    """A bound as a person writes it: 1000000 rather than 1e+06, 0.001 rather than 1e-03."""
    if isinstance(x, float):
        # 12 places: 1e-07 is 0.0000001, not "0." (6 places round it away)
        return str(int(x)) if x.is_integer() else f"{x:.12f}".rstrip("0").rstrip(".")
    return str(x)


# ---- what a preset would change ---------------------------------------------------------

def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and \
            not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    norm = [("" if v is None else str(v)).strip() for v in (a, b)]
    return norm[0] == norm[1]


def _shown(value: Any, path: str | None = None) -> str:
    """A setting's value for a sentence: choices and switches in words, long text cut short."""
    if value in (None, ""):
        return t("form.value.empty")
    try:
        kind = kind_of(path) if path else None
    except (KeyError, AttributeError):  # not a setting of RunConfig
        kind = None
    if kind == "bool" and isinstance(value, bool):
        return t("form.value.on" if value else "form.value.off")
    if kind == "choice" and str(value) in map(str, field_of(path).metadata["choices"]):
        return t(f"settings.{path}.choice.{value}")
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "…"


def reward_summary(rewards: list[dict]) -> str:
    if not rewards:
        return t("form.rewards.none")
    return ", ".join(f"{r.get('name') or r.get('template')} ×{r.get('weight', 1.0):g}"
                     for r in rewards)


def describe_changes(paths: list[str], old: list[Any], new: list[Any],
                     old_rewards: list[dict] | None = None,
                     new_rewards: list[dict] | None = None) -> list[str]:
    """One line per setting that `new` would change, in plain words (label: old → new)."""
    lines = []
    for path, a, b in zip(paths, old, new):
        if not _same(a, b):
            lines.append(t("form.change.setting", label=label_of(path), path=path,
                           old=_shown(a, path), new=_shown(b, path)))
    if new_rewards is not None and [clean_reward(r) for r in old_rewards or []] != \
            [clean_reward(r) for r in new_rewards]:
        lines.insert(0, t("form.change.rewards", old=reward_summary(old_rewards or []),
                          new=reward_summary(new_rewards)))
    return lines
