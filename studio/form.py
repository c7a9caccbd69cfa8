"""The run config as a form: one widget per `RunConfig` field, built from the field's metadata.

The wizard keeps no config object of its own. Every step registers its widgets under the dotted
config path they edit (`grpo.beta`, `data.source`, ...); building a config is reading those
values back (`config_from_values`), loading one is the reverse (`values_from_config`). Rewards are
a list of plain dicts kept in a `gr.State`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
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


LONG_CHOICE = 28  # characters of a choice's text that one place in a row of four shows whole


def choice_width(path: str) -> int:
    """The longest text among a setting's choices, in any of the page's languages."""
    from .i18n import LANGUAGES, t

    return max(len(t(f"settings.{path}.choice.{c}", lang))
               for c in field_of(path).metadata["choices"] for lang in LANGUAGES)


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
        if "scale" not in kwargs and choice_width(path) > LONG_CHOICE:
            # a list whose choices read as a phrase takes two places in its row of settings:
            # in one place the box cut "dapo: average over all tokens of a step" after "ste"
            common["scale"] = 2
        return gr.Dropdown(choices=[(L(f"settings.{path}.choice.{c}"), c) for c in meta["choices"]],
                           value=value, **common)
    if kind in ("int", "float") and not optional(path):
        # the box shows its range; a number outside it is put back inside with one line that
        # says so (`bounded_number`), never a failure of whatever button comes next
        return bounded_number(value, minimum=lo,
                              maximum=hi if hi is not None else 2 ** 53 - 1,
                              precision=0 if kind == "int" else None, **common)
    # optional numbers are text: empty means "automatic", which a number box cannot show
    return gr.Textbox(value="" if value is None else str(value) if kind != "text" else value,
                      lines=1, placeholder=L("settings.automatic") if optional(path) else None,
                      **common)


# ---- numbers with a range --------------------------------------------------------------
#
# Gradio checks a number box's or a slider's minimum and maximum in `preprocess`, for every
# event that takes the box as an input, and fails that event with its own English error: a
# number typed out of range in one box broke whichever button used it next (the preset's
# question never opened; the box still held the number). These boxes keep their range on the
# page (the browser's arrows and the slider's track stop there) but never fail an event:
# handlers get the number brought into the range, and a guard on the box (when it is left,
# Enter is pressed or a slider let go) puts that number in the box with one line, in the
# page's language, where the box's help was.

MAX_SAFE = 2 ** 53 - 1  # the largest whole number a browser holds exactly


def number_in_range(value: Any, lo: float | None, hi: float | None) -> float | int | None:
    """`value` as a number inside [lo, hi] (the nearest end when it is outside); None when it
    is no number at all (empty, text, NaN)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except (ValueError, OverflowError):
            return None
    if not isinstance(value, (int, float)) or value != value:  # NaN is not equal to itself
        return None
    if lo is not None and value < lo:
        return lo
    if hi is not None and value > hi:
        return hi
    return value if math.isfinite(value) else None  # an infinity with no end to stop at


def range_words(lo: float | None, hi: float | None) -> str:
    """The range of a box in the page's language ("between 1 and 512")."""
    if lo is not None and hi is not None and hi < MAX_SAFE:
        return t("form.range.between", lo=number_words(lo), hi=number_words(hi))
    if lo is not None:
        return t("form.range.at_least", lo=number_words(lo))
    return t("form.range.at_most", hi=number_words(hi))


def range_message(label: str, lo: float | None, hi: float | None, now: Any) -> str:
    """One line for a number put back into its range: "LoRA rank must be between 1 and 512:
    it is now 512." """
    return t("form.range.outside", label=label, range=range_words(lo, hi),
             value=number_words(now))


def _rounded(value, precision: int | None):
    if precision is None:
        return value
    return int(round(value)) if precision == 0 else round(value, precision)


def _key(text) -> str | None:
    """The catalog key behind a text fixed when the page is built (`L(key)`)."""
    return getattr(text, "key", None)


def _guard(box, triggers, lo, hi, precision, label_key, info_key) -> None:
    """On each trigger, check the number the box holds (as the browser sent it, before Gradio
    sees it): outside the range it is put back inside and the box's help says so in one line;
    inside, the help comes back."""
    import gradio as gr

    from .i18n import lang_of, speaking

    def check(value, request: gr.Request):
        with speaking(lang_of(request)):
            label = t(label_key) if label_key else ""
            help_text = t(info_key) if info_key else None
            typed = number_in_range(value, None, None)
            if typed is None:  # an empty box: said, nothing changed (starting says it again)
                return gr.update(info="⚠️ " + t("form.range.empty", label=label,
                                                 range=range_words(lo, hi)))
            inside = number_in_range(typed, lo, hi)
            now = _rounded(inside, precision)
            if now == value and not isinstance(value, str):
                return gr.update(info=help_text)
            if inside == typed:  # only rounded: the box shows the number in use
                return gr.update(value=now, info=help_text)
            return gr.update(value=now, info="⚠️ " + range_message(label, lo, hi, now))

    check.__name__ = f"check_range_{box.elem_id or 'box'}".replace("-", "_")
    check.__annotations__ = {"request": gr.Request}  # so that Gradio hands it the request
    for trigger in triggers:
        trigger(check, box, box, preprocess=False, show_progress="hidden", queue=False)


@functools.cache
def _bounded_classes():
    import gradio as gr

    class Number(gr.Number):
        """gr.Number whose range never fails an event: `preprocess` brings the number inside."""
        is_template = True  # drawn by Gradio's own number box

        def preprocess(self, payload):
            value = number_in_range(payload, self.minimum, self.maximum)
            return None if value is None else self.round_to_precision(value, self.precision)

    class Slider(gr.Slider):
        """gr.Slider whose range never fails an event (its number box takes any number)."""
        is_template = True

        def preprocess(self, payload):
            value = number_in_range(payload, self.minimum, self.maximum)
            if value is None:  # not a number: where the slider starts
                value = self.minimum
            return gr.Number.round_to_precision(value, self.precision)

    return Number, Slider


def bounded_number(value=None, *, minimum=None, maximum=None, precision=None, **kwargs):
    """A number box with a range that is put back into it, with one line, rather than failing
    (see above). `label` and `info` are texts fixed with `L(...)`; the line names the label."""
    number, _ = _bounded_classes()
    box = number(value=value, minimum=minimum, maximum=maximum, precision=precision, **kwargs)
    _guard(box, [box.blur, box.submit], minimum, maximum, precision,
           _key(kwargs.get("label")), _key(kwargs.get("info")))
    return box


def bounded_slider(minimum: float, maximum: float, value=None, **kwargs):
    """A slider whose number box puts a number outside its range back inside, with one line
    (see above), rather than failing the next event that reads it."""
    _, slider = _bounded_classes()
    box = slider(minimum, maximum, value, **kwargs)
    # the slider's own number box brings a typed number inside when left, after this event
    # sent what was typed: the guard says so (a drag stays inside and only brings the help back)
    _guard(box, [box.release], minimum, maximum, box.precision,
           _key(kwargs.get("label")), _key(kwargs.get("info")))
    return box


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


def template_title(template: str) -> str:
    """A template's name in plain words, in the page's language ("Length near a target"); the
    id for a template without one."""
    key = f"reward.{template}.title"
    title = t(key)
    return str(template) if title == key else title


def reward_title(item: dict) -> str:
    """A reward as the page names it: the name the user gave it, else its template's title."""
    return str(item["name"]) if item.get("name") else template_title(item.get("template"))


def reward_summary(rewards: list[dict]) -> str:
    if not rewards:
        return t("form.rewards.none")
    return ", ".join(f"{reward_title(r)} ×{r.get('weight', 1.0):g}" for r in rewards)


def _full_params(item: dict) -> dict:
    """A reward's settings with its template's defaults filled in (the form shows every one; a
    settings file names only those it changes)."""
    from reward_templates.base import get_template
    try:
        defaults = {p.name: p.default for p in get_template(item.get("template")).params}
    except Exception:  # an unknown template: compared as written
        defaults = {}
    return {**defaults, **dict(item.get("params") or {})}


def _reward_changes(old: list[dict], new: list[dict]) -> list[str]:
    """What a new reward set changes: the set itself when its rewards or weights differ, else
    each setting of a reward that differs, by its label (a preset that changed only a target
    length once said "Rewards: length_target ×0.5 → length_target ×0.5")."""
    same_rewards = [(r.get("template"), r.get("name")) for r in old] == \
        [(r.get("template"), r.get("name")) for r in new]
    lines = []
    if not same_rewards or any(not _same(a.get("weight", 1.0), b.get("weight", 1.0))
                               for a, b in zip(old, new)):
        lines.append(t("form.change.rewards", old=reward_summary(old), new=reward_summary(new)))
    if not same_rewards:
        return lines
    for a, b in zip(old, new):
        pa, pb = _full_params(a), _full_params(b)
        for name in [n for n in pb if n in pa] + [n for n in pa if n not in pb]:
            if _same(pa.get(name), pb.get(name)):
                continue
            key = f"reward.{b.get('template')}.param.{name}.label"
            label = t(key)
            lines.append(t("form.change.reward_param", reward=reward_title(b),
                           label=name if label == key else label,
                           old=_shown(pa.get(name), ""), new=_shown(pb.get(name), "")))
    return lines


def describe_changes(paths: list[str], old: list[Any], new: list[Any],
                     old_rewards: list[dict] | None = None,
                     new_rewards: list[dict] | None = None) -> list[str]:
    """One line per setting that `new` would change, in plain words (label: old → new)."""
    lines = []
    for path, a, b in zip(paths, old, new):
        if not _same(a, b):
            lines.append(t("form.change.setting", label=label_of(path), path=path,
                           old=_shown(a, path), new=_shown(b, path)))
    if new_rewards is not None:
        lines[:0] = _reward_changes(old_rewards or [], new_rewards)
    return lines
