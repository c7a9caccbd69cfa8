"""Step 3, Rewards: pick templates from the gallery, weigh them, and try them on real output."""
from __future__ import annotations

import dataclasses
import json
import math
import re

import gradio as gr

from reward_templates import (DEFAULT_SET_DESCRIPTIONS, RewardError, RewardSet,
                              default_reward_set, get_template, list_templates, preview)

from .access import AccessError
from .form import bounded_slider, number_words, template_title
from .i18n import L, t
from .jobs import JobError, model_threads

# shown in the error messages as they are (no braces in the catalog's texts)
JSON_EXAMPLE = '{"name": value}'


def gallery_markdown() -> str:
    """Every registered template with its beginner description, grouped by category, in the
    page's language (a blank line before each heading, so none runs into the list above it)."""
    by_cat: dict[str, list] = {}
    for spec in list_templates():
        by_cat.setdefault(spec.category, []).append(spec)
    parts = []
    for cat, specs in by_cat.items():
        parts.append(f"\n#### {t(f'reward.category.{cat}')}\n")
        for s in specs:
            needs = f" *{t('rewards.gallery.needs_answer')}*" if s.needs_answer else ""
            parts.append(f"- **{t(f'reward.{s.name}.title')}** (`{s.name}`): "
                         f"{t(f'reward.{s.name}.description')}{needs}")
    return "\n".join(parts).strip()


def template_choices() -> list:
    """The dropdown's choices: each template's title and name, translated in the browser."""
    return [(L(f"reward.{s.name}.choice"), s.name) for s in list_templates()]


def code(text) -> str:
    """`text` as inline code on one line, whatever backticks it holds."""
    text = " ".join(str(text).split("\n"))
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def template_details(name: str) -> tuple[str, str]:
    """(markdown about the template's settings, its default params as JSON), in the page's
    language."""
    if not name:
        return "", "{}"
    spec = get_template(name)
    key = f"reward.{spec.name}"
    lines = [f"**{t(key + '.title')}** ({code(spec.name)}) — {t(key + '.description')}"]
    if spec.needs_answer:
        lines.append(f"\n*{t('rewards.details.needs_answer')}*")
    lines.append("\n" + t("rewards.details.settings" if spec.params else
                          "rewards.details.no_settings") + "\n")
    for p in spec.params:
        extra = [_range_text(p)] if p.min is not None or p.max is not None else []
        if p.choices:
            extra.append(t("rewards.details.one_of",
                           choices=", ".join(code(c) for c in p.choices)))
        default = t("rewards.details.default", value=code(json.dumps(p.default,
                                                                       ensure_ascii=False)))
        more = "; ".join([default] + extra)
        lines.append(f"- **{t(f'{key}.param.{p.name}.label')}** ({code(p.name)}; {more}): "
                     f"{t(f'{key}.param.{p.name}.help')}")
    if spec.examples:
        e = spec.examples[0]
        score = t("rewards.na") if e.score is None else number_words(float(e.score))
        completion = code(e.completion[:120])
        if e.answer is None:
            lines.append("\n" + t("rewards.details.example", completion=completion, score=score))
        else:
            lines.append("\n" + t("rewards.details.example_answer", completion=completion,
                                  answer=code(e.answer), score=score))
    defaults = {p.name: p.default for p in spec.params}
    return "\n".join(lines), json.dumps(defaults, ensure_ascii=False)


def parse_params(text: str) -> dict:
    try:
        value = json.loads(text or "{}")
    except ValueError as exc:
        raise RewardError(t("rewards.error.bad_json", msg=exc.msg, pos=exc.pos,
                            example=JSON_EXAMPLE)) from None
    if not isinstance(value, dict):
        raise RewardError(t("rewards.error.not_object", example=JSON_EXAMPLE))
    return value


def add_reward(rewards: list[dict], template: str, weight, params_text: str) -> list[dict]:
    """The list with one more reward; raises RewardError when it would not be a valid set."""
    if not template:
        raise RewardError(t("rewards.error.no_template"))
    item = {"template": template, "weight": float(weight if weight is not None else 1.0),
            "params": parse_params(params_text)}
    new = list(rewards) + [item]
    RewardSet.from_config(new)  # validates names, params and weights
    return new


def remove_reward(rewards: list[dict], index) -> list[dict]:
    if index is None or not 0 <= int(index) < len(rewards):
        raise RewardError(t("rewards.error.no_index"))
    return [r for i, r in enumerate(rewards) if i != int(index)]


def summary(rewards: list[dict]) -> str:
    """The whole set in one plain line, in the page's language: "An answer's score: 1 × Right
    number + 0.25 × Tag checklist." """
    if not rewards:
        return ""
    terms = " + ".join(f"{weight_words(r.get('weight', 1.0))} × {template_title(r['template'])}"
                       for r in rewards)
    line = t("rewards.summary", terms=terms.replace("+ -", "− "))
    against = [t("rewards.name.quoted", name=template_title(r["template"]))
               for r in rewards if _weight(r) < 0]
    if against:  # a negative weight turns a reward into a penalty: said in words
        line += " " + t("rewards.summary.negative", names=", ".join(against))
    return line


def _weight(r: dict) -> float:
    try:
        return float(r.get("weight", 1.0))
    except (TypeError, ValueError):
        return 0.0


def weight_words(value) -> str:
    """A weight as a person writes it (0.25, 1, -3); a number too long for that in short."""
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        return str(value)[:20]
    return number_words(x) if abs(x) < 1e9 else f"{x:.3g}"


def propose(sample: list[dict]) -> tuple[list[dict], str]:
    rs = default_reward_set(sample or [])
    described = t(f"reward.set.{rs.preset}") if rs.preset in DEFAULT_SET_DESCRIPTIONS else ""
    return rs.to_config(), t("rewards.msg.proposed", description=described)


def score_table(rewards: list[dict], questions: list[str], answers: list, completions) -> dict:
    """One row per completion: question, completion, each template's score, the total."""
    rs = RewardSet.from_config(rewards)
    prompts, texts, refs = [], [], []
    for q, a, group in zip(questions, answers, completions):
        for text in group:
            prompts.append(q), texts.append(text), refs.append(a)
    rows = preview(rs, prompts, texts, refs)
    names = rs.names
    data = [[p, r["completion"]] + [_fmt(r[n]) for n in names] + [_fmt(r["total"])]
            for p, r in zip(prompts, rows)]
    return {"headers": [t("rewards.try.col.question"), t("rewards.try.col.completion")]
            + score_headers(rs) + [t("rewards.try.col.total")], "data": data}


def score_headers(rs: RewardSet) -> list[str]:
    """Each reward's column heading in plain words: its own name where the set gives it one,
    else its template's title (numbered where a title comes twice)."""
    heads = [term.name if term.name != term.template and not
             re.fullmatch(re.escape(term.template) + r"(_\d+)?", term.name)
             else template_title(term.template) for term in rs.terms]
    seen: dict[str, int] = {}
    out = []
    for head in heads:
        seen[head] = seen.get(head, 0) + 1
        out.append(head if heads.count(head) == 1 else f"{head} {seen[head]}")
    return out


def score_widths(n_scores: int) -> list[str]:
    """Column widths of the score table: the question and the answer share what the scores
    leave (the answer wraps), so that every score shows without scrolling sideways."""
    score = math.floor(min(9.0, 70.0 / (n_scores + 1)) * 10) / 10  # the total is a score too
    rest = 100 - score * (n_scores + 1)
    question = math.floor(rest * 3) / 10
    answer = math.floor((rest - question) * 10) / 10
    return [f"{question:g}%", f"{answer:g}%"] + [f"{score:g}%"] * (n_scores + 1)


def _fmt(v):
    return t("rewards.na") if v is None else round(float(v), 3)


def weight_range() -> tuple[float, float]:
    """The weights a reward may have (a negative one makes it a penalty): the config's."""
    from core.config import RewardConfig

    meta = {f.name: f.metadata for f in dataclasses.fields(RewardConfig)}["weight"]
    return meta["min"], meta["max"]


def set_weight(rewards: list[dict], index: int, value) -> list[dict]:
    """The list with reward `index` weighing `value`; RewardError (in the page's language)
    naming the problem (no number, outside the range) and the weight that stays."""
    stays = " " + t("rewards.item.stays", value=weight_words(rewards[index].get("weight", 1.0)))
    weight = None
    if value is not None and not isinstance(value, bool):
        try:
            weight = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError, OverflowError):
            weight = None
    if weight is None or weight != weight:  # NaN
        raise RewardError(t("rewards.item.bad_weight") + stays)
    lo, hi = weight_range()
    if not lo <= weight <= hi:
        raise RewardError(t("rewards.item.weight_range", range=t(
            "rewards.details.range", min=number_words(lo), max=number_words(hi))) + stays)
    new = [dict(r) for r in rewards]
    new[index]["weight"] = weight
    RewardSet.from_config(new)
    return new


def set_param(rewards: list[dict], index: int, name: str, value) -> list[dict]:
    """The list with setting `name` of reward `index` set to `value` (as its type wants it);
    RewardError with a one-line message in the page's language when it does not fit."""
    spec = get_template(rewards[index]["template"])
    param = next(p for p in spec.params if p.name == name)
    try:
        value = param.coerce(value, spec.name)
    except RewardError:
        label = t(f"reward.{spec.name}.param.{name}.label")
        if param.type in ("int", "float"):
            stays = " " + t("rewards.item.stays", value=param_words(rewards[index], param))
            number = param._to_number(value)
            whole = number is None or param.type == "float" or number == int(number)
            if number is not None and whole:  # a number of the right kind: its range is wrong
                raise RewardError(t("rewards.item.out_of_range", setting=label,
                                    range=_range_text(param)) + stays) from None
            kind = t("rewards.item.whole_number" if param.type == "int" else "rewards.item.number")
            limits = _range_text(param)  # "a whole number from 0 to 100000"
            raise RewardError(t("rewards.item.bad_number", setting=label,
                                kind=f"{kind} {limits}" if limits else kind) + stays) from None
        raise
    new = [dict(r, params=dict(r.get("params") or {})) for r in rewards]
    new[index]["params"][name] = value
    RewardSet.from_config(new)  # the template's own checks (a regex that does not compile...)
    return new


def param_words(reward: dict, param) -> str:
    """The value a reward's setting has now, as the form shows it."""
    value = (reward.get("params") or {}).get(param.name, param.default)
    return weight_words(value) if isinstance(value, (int, float)) and \
        not isinstance(value, bool) else str(value)


def in_use(rewards: list[dict], index: int, name: str | None):
    """What reward `index` uses now: its weight (name None) or the value of setting `name`."""
    reward = rewards[index]
    if name is None:
        return reward.get("weight", 1.0)
    spec = get_template(reward["template"])
    param = next(p for p in spec.params if p.name == name)
    value = (reward.get("params") or {}).get(name, param.default)
    return ", ".join(map(str, value or [])) if param.type == "list" else value


def _range_text(p) -> str:
    if p.min is not None and p.max is not None:
        return t("rewards.details.range", min=number_words(p.min), max=number_words(p.max))
    if p.min is not None:
        return t("rewards.details.at_least", min=number_words(p.min))
    if p.max is not None:
        return t("rewards.details.at_most", max=number_words(p.max))
    return ""


CHOICE_MIN_WIDTH = 320  # px: what a reward setting's choices written in words need


def param_widget(spec, p, value, elem_id: str):
    """A form field for one setting of a template, labelled in the page's language."""
    key = f"reward.{spec.name}.param.{p.name}"
    common = dict(label=L(key + ".label"), info=L(key + ".help"), elem_id=elem_id,
                  elem_classes=["reward-setting"], interactive=True)
    if value is None:
        value = p.default
    if p.type == "bool":
        return gr.Checkbox(bool(value), **common)
    if p.type == "choice":
        # its words need room: in a narrow column "automatic: the…" was all the box showed (the
        # row gives it a wider place instead)
        return gr.Dropdown([(L(f"{key}.choice.{c}"), c) for c in p.choices], value=value,
                           min_width=CHOICE_MIN_WIDTH, **common)
    if p.type in ("int", "float"):
        # no bounds on the box: an out-of-range number gets our one-line message, with the range
        return gr.Number(value, precision=0 if p.type == "int" else None, **common)
    if p.type == "list":
        return gr.Textbox(", ".join(map(str, value or [])), placeholder=L("rewards.item.list_hint"),
                          **common)
    long = p.name in ("code", "tests") or "\n" in str(p.default)
    return gr.Textbox(str(value), lines=6 if long else 1, max_lines=30 if long else 1, **common)


def build(studio, rewards: gr.State) -> dict:
    """The step: templates to add on the left, the rewards in use as a form on the right (each
    with its weight, its settings and a button to remove it), and a try-out below."""
    gr.Markdown(L("rewards.intro"))
    layout = gr.State([])  # the rewards as the form below last drew them
    shown = gr.State([])   # the rewards as the form shows them now (edits included)
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Accordion(L("rewards.gallery.title"), open=False):
                gallery = gr.Markdown(elem_id="reward-gallery")  # filled in the page's language
            pick = gr.Dropdown(template_choices(), label=L("rewards.pick.label"),
                               info=L("rewards.pick.info"), elem_id="reward-pick")
            details = gr.Markdown(elem_id="reward-details")
            add = gr.Button(L("rewards.add.button"), elem_id="reward-add", variant="primary")
        with gr.Column(scale=4):
            gr.Markdown(L("rewards.table.heading"))
            total = gr.Markdown(elem_id="reward-summary")
            message = gr.Markdown(elem_id="reward-message")
            with gr.Column(elem_id="reward-list"):
                @gr.render(inputs=layout)
                def the_form(rs):
                    if not rs:
                        gr.Markdown(L("rewards.item.none"), elem_id="reward-none")
                    for i, r in enumerate(rs or []):
                        reward_item(studio, rewards, shown, message, i, r)
            proposed = gr.Button(L("rewards.propose.button"), elem_id="reward-propose",
                                 size="sm")
    with gr.Accordion(L("rewards.try.title"), open=True):
        with gr.Row():
            n_q = bounded_slider(1, 4, 2, step=1, label=L("rewards.try.questions"),
                                 elem_id="reward-try-questions")
            n_c = bounded_slider(1, 4, 2, step=1, label=L("rewards.try.answers"),
                                 elem_id="reward-try-answers")
            try_btn = gr.Button(L("rewards.try.button"), elem_id="reward-try")
        try_status = gr.Markdown(elem_id="reward-try-status")
        # shown once it has scores (empty, it showed the framework's headers "1 2 3")
        try_table = gr.Dataframe(interactive=False, wrap=True, elem_id="reward-try-table",
                                 elem_classes=["aha-score-table"], visible=False)
    return {"pick": pick, "details": details, "add": add, "layout": layout, "shown": shown,
            "summary": total,
            "propose": proposed, "message": message, "n_q": n_q, "n_c": n_c, "try": try_btn,
            "try_status": try_status, "try_table": try_table, "gallery": gallery}


def reward_item(studio, rewards: gr.State, shown: gr.State, message, i: int, r: dict) -> None:
    """One reward of the form: its title, weight, settings and a remove button; each change is
    checked and kept at once (an invalid one is named in the message and not kept)."""
    spec = get_template(r["template"])
    params = r.get("params") or {}
    with gr.Group(elem_id=f"reward-{i}", elem_classes=["reward-item"]):
        with gr.Row(equal_height=True):
            gr.Markdown(L(f"reward.{spec.name}.choice"), elem_classes=["reward-item-title"])
            remove = gr.Button(L("rewards.item.remove"), size="sm", scale=0, min_width=120,
                               elem_id=f"reward-{i}-remove")
        with gr.Row():
            weight = gr.Number(r.get("weight", 1.0), label=L("rewards.weight.label"),
                               info=L("rewards.weight.info"), elem_id=f"reward-{i}-weight",
                               min_width=140, interactive=True)
            fields = [(p.name, param_widget(spec, p, params.get(p.name),
                                             f"reward-{i}-{p.name}")) for p in spec.params]

    def keep(change):
        def on_edit(user, rs, value):
            if i >= len(rs or []) or rs[i]["template"] != spec.name:
                return gr.skip(), gr.skip(), gr.skip()  # the form is being redrawn
            try:
                new = change(rs, value)
            except RewardError as exc:
                return gr.skip(), gr.skip(), f"❌ {exc}"
            return new, new, ""
        return studio.handler(on_edit)

    def show_in_use(change, name):
        """When the box is left (or Enter pressed) holding a value that was not kept, it
        shows the value in use again (the message says why); while typing it is left alone."""
        def on_leave(user, rs, value):
            if i >= len(rs or []) or rs[i]["template"] != spec.name:
                return gr.skip()
            try:
                change(rs, value)
            except RewardError:
                return in_use(rs, i, name)
            return gr.skip()
        return studio.handler(on_leave)

    # no queue of their own: a named one would be the whole server's, every student's edits
    # in one line. A box left holding a refused value shows the value in use, which is the
    # one before whatever the typing's own event does (a refused value is never kept)
    opts = dict(show_progress="hidden", trigger_mode="always_last")
    boxes = [(None, weight, lambda rs, v: set_weight(rs, i, v))] + \
        [(name, widget, lambda rs, v, name=name: set_param(rs, i, name, v))
         for name, widget in fields]
    for name, box, change in boxes:
        box.input(keep(change), [rewards, box], [rewards, shown, message], **opts)
        if isinstance(box, (gr.Number, gr.Textbox)):
            gr.on([box.blur, box.submit], show_in_use(change, name), [rewards, box], box,
                  **opts)

    def on_remove(user, rs):
        if i >= len(rs or []):
            return gr.skip(), gr.skip()
        return remove_reward(rs, i), t("rewards.msg.removed", template=template_title(spec.name))

    remove.click(studio.handler(on_remove), rewards, [rewards, message])


def wire(ui: dict, form: dict, studio, rewards: gr.State, sample: gr.State) -> None:
    # every handler below runs in the page's language (Studio.handler)
    def on_load(user):  # the texts the server writes, in the page's language
        return gallery_markdown()

    gr.on(None, studio.handler(on_load), None, ui["gallery"])

    def on_pick(user, name):
        return template_details(name)[0]

    ui["pick"].change(studio.handler(on_pick), ui["pick"], ui["details"])

    def on_add(user, rs, template):
        try:
            return add_reward(rs, template, 1.0, "{}"), t("rewards.msg.added",
                                                          template=template_title(template))
        except RewardError as exc:
            return gr.skip(), f"❌ {exc}"

    def on_propose(user, smp):
        return propose(smp)

    ui["add"].click(studio.handler(on_add), [rewards, ui["pick"]], [rewards, ui["message"]])
    ui["propose"].click(studio.handler(on_propose), sample, [rewards, ui["message"]])

    def redraw(rs, seen):
        """A change that did not come from the form itself (added, removed, proposed, a preset,
        a restored draft) draws the form again."""
        if rs == seen:
            return gr.skip(), gr.skip()
        return rs, rs

    rewards.change(redraw, [rewards, ui["shown"]], [ui["layout"], ui["shown"]],
                   show_progress="hidden")

    def on_rewards(user, rs):
        return summary(rs)

    rewards.change(studio.handler(on_rewards), rewards, ui["summary"], show_progress="hidden")

    model_inputs = [form[p] for p in ("model.source", "model.precision", "model.chat_template",
                                      "data.system_prompt", "grpo.max_completion_length",
                                      "grpo.temperature", "model.dynamic_keep_share")]

    def on_try(user, rs, smp, n_q, n_c, source, precision, template, system, max_new,
               temperature, keep_share):
        if not rs:
            yield "❌ " + t("rewards.try.no_rewards"), gr.skip()
            return
        rows = [r for r in (smp or []) if r.get("question")][:int(n_q)]
        if not rows:
            yield "❌ " + t("rewards.try.no_data"), gr.skip()
            return
        try:
            source = user.model_source(source)
        except AccessError as exc:
            yield f"❌ {exc}", gr.skip()
            return
        req = {"job": "generate", "source": source, "precision": precision,
               "dynamic_keep_share": float(0.1 if keep_share is None else keep_share),
               "chat_template": template, "system": system, "num": int(n_c),
               "questions": [r["question"] for r in rows],
               "max_new_tokens": int(max_new or 64), "temperature": float(temperature or 0.7),
               "threads": model_threads(training=bool(studio.manager.running()))}
        yield "⏳ " + t("rewards.try.starting"), gr.skip()
        try:
            for kind, value in studio.jobs.run(req):
                if kind == "progress":
                    yield f"⏳ {value}…", gr.skip()
                else:
                    table = score_table(rs, [r["question"] for r in rows],
                                        [r.get("answer") for r in rows], value["base"])
                    # every score in view at once: the answers wrap, the scores stay narrow
                    widths = score_widths(len(table["headers"]) - 3)
                    yield "✅ " + t("rewards.try.done"), gr.update(
                        value=table, column_widths=widths, visible=True)
        except (JobError, RewardError) as exc:
            yield f"❌ {exc}", gr.skip()

    ui["try"].click(studio.handler(on_try), [rewards, sample, ui["n_q"], ui["n_c"]] + model_inputs,
                    [ui["try_status"], ui["try_table"]], concurrency_limit=1)
