"""Step 3, Rewards: pick templates from the gallery, weigh them, and try them on real output."""
from __future__ import annotations

import json

import gradio as gr

from reward_templates import (DEFAULT_SET_DESCRIPTIONS, RewardError, RewardSet,
                              default_reward_set, get_template, list_templates, preview)

from .access import AccessError
from .errors import friendly
from .jobs import JobError


def gallery_markdown() -> str:
    """Every registered template with its beginner description, grouped by category."""
    by_cat: dict[str, list] = {}
    for spec in list_templates():
        by_cat.setdefault(spec.category, []).append(spec)
    parts = []
    for cat, specs in by_cat.items():
        parts.append(f"**{cat.capitalize()}**")
        for s in specs:
            needs = " *(needs reference answers)*" if s.needs_answer else ""
            parts.append(f"- `{s.name}` — **{s.title}**: {s.description}{needs}")
    return "\n".join(parts)


def template_choices() -> list[tuple[str, str]]:
    return [(f"{s.title} ({s.name})", s.name) for s in list_templates()]


def template_details(name: str) -> tuple[str, str]:
    """(markdown about the template's settings, its default params as JSON)."""
    if not name:
        return "", "{}"
    spec = get_template(name)
    lines = [f"**{spec.title}** — {spec.description}"]
    for p in spec.params:
        rng = f" ({p.min}…{p.max})" if p.min is not None or p.max is not None else ""
        ch = f" one of {', '.join(map(str, p.choices))}" if p.choices else ""
        lines.append(f"- `{p.name}` = `{json.dumps(p.default)}`{rng}{ch}: {p.help}")
    if spec.examples:
        e = spec.examples[0]
        lines.append(f"\nExample: `{e.completion[:120]}` with answer `{e.answer}` scores "
                     f"**{e.score}**")
    defaults = {p.name: p.default for p in spec.params}
    return "\n".join(lines), json.dumps(defaults, ensure_ascii=False)


def parse_params(text: str) -> dict:
    try:
        value = json.loads(text or "{}")
    except ValueError as exc:
        raise RewardError(f"The settings are not valid JSON ({exc.msg} at character "
                          f"{exc.pos}); write them like {{\"name\": value}}.") from None
    if not isinstance(value, dict):
        raise RewardError("The settings must be a JSON object like {\"name\": value}.")
    return value


def add_reward(rewards: list[dict], template: str, weight, params_text: str) -> list[dict]:
    """The list with one more reward; raises RewardError when it would not be a valid set."""
    if not template:
        raise RewardError("Choose a template first.")
    item = {"template": template, "weight": float(weight if weight is not None else 1.0),
            "params": parse_params(params_text)}
    new = list(rewards) + [item]
    RewardSet.from_config(new)  # validates names, params and weights
    return new


def remove_reward(rewards: list[dict], index) -> list[dict]:
    if index is None or not 0 <= int(index) < len(rewards):
        raise RewardError("Choose which reward to remove.")
    return [r for i, r in enumerate(rewards) if i != int(index)]


def rewards_table(rewards: list[dict]) -> dict:
    rows = [[i + 1, r["template"], r.get("weight", 1.0),
             json.dumps(r.get("params") or {}, ensure_ascii=False)] for i, r in enumerate(rewards)]
    return {"headers": ["#", "template", "weight", "settings"], "data": rows}


def remove_choices(rewards: list[dict]) -> list[tuple[str, int]]:
    return [(f"{i + 1}. {r['template']}", i) for i, r in enumerate(rewards)]


def propose(sample: list[dict]) -> tuple[list[dict], str]:
    rs = default_reward_set(sample or [])
    return rs.to_config(), f"Proposed for this data: {DEFAULT_SET_DESCRIPTIONS.get(rs.preset, '')}"


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
    return {"headers": ["question", "completion"] + names + ["total"], "data": data}


def _fmt(v):
    return "n/a" if v is None else round(float(v), 3)


def build() -> dict:
    gr.Markdown("### 3 · Rewards\nA reward scores each answer the model writes; training makes "
                "high-scoring answers more likely. Combine a few templates.")
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Accordion("All reward templates", open=False):
                gr.Markdown(gallery_markdown(), elem_id="reward-gallery")
            pick = gr.Dropdown(template_choices(), label="Template", elem_id="reward-pick")
            details = gr.Markdown(elem_id="reward-details")
            with gr.Row():
                weight = gr.Number(1.0, label="Weight", elem_id="reward-weight",
                                   info="How much this reward counts in the total.")
                params = gr.Textbox("{}", label="Settings (JSON)", elem_id="reward-params")
            add = gr.Button("Add this reward", elem_id="reward-add", variant="primary")
        with gr.Column(scale=4):
            table = gr.Dataframe(rewards_table([]), label="Rewards in use",
                                 interactive=False, elem_id="reward-table")
            with gr.Row():
                which = gr.Dropdown([], label="Remove", elem_id="reward-which", scale=2)
                remove = gr.Button("Remove", elem_id="reward-remove", scale=1)
                proposed = gr.Button("Use the set proposed for my data", elem_id="reward-propose",
                                     scale=2)
            message = gr.Markdown(elem_id="reward-message")
    with gr.Accordion("Try it: generate a few answers and score them", open=True):
        with gr.Row():
            n_q = gr.Slider(1, 4, 2, step=1, label="Questions")
            n_c = gr.Slider(1, 4, 2, step=1, label="Answers per question")
            try_btn = gr.Button("Try it", elem_id="reward-try")
        try_status = gr.Markdown(elem_id="reward-try-status")
        try_table = gr.Dataframe(interactive=False, wrap=True, elem_id="reward-try-table")
    return {"pick": pick, "details": details, "weight": weight, "params": params, "add": add,
            "table": table, "which": which, "remove": remove, "propose": proposed,
            "message": message, "n_q": n_q, "n_c": n_c, "try": try_btn,
            "try_status": try_status, "try_table": try_table}


def wire(ui: dict, form: dict, studio, rewards: gr.State, sample: gr.State) -> None:
    def show(rs, note=""):
        return rs, rewards_table(rs), gr.update(choices=remove_choices(rs), value=None), note

    outs = [rewards, ui["table"], ui["which"], ui["message"]]
    ui["pick"].change(template_details, ui["pick"], [ui["details"], ui["params"]])

    @friendly
    def on_add(rs, template, weight, params_text):
        try:
            return show(add_reward(rs, template, weight, params_text), f"Added `{template}`.")
        except RewardError as exc:
            return rs, gr.skip(), gr.skip(), f"❌ {exc}"

    @friendly
    def on_remove(rs, index):
        try:
            return show(remove_reward(rs, index), "Removed.")
        except RewardError as exc:
            return rs, gr.skip(), gr.skip(), f"❌ {exc}"

    @friendly
    def on_propose(smp):
        new, note = propose(smp)
        return show(new, note)

    ui["add"].click(on_add, [rewards, ui["pick"], ui["weight"], ui["params"]], outs)
    ui["remove"].click(on_remove, [rewards, ui["which"]], outs)
    ui["propose"].click(on_propose, sample, outs)
    rewards.change(lambda rs: (rewards_table(rs), gr.update(choices=remove_choices(rs))),
                   rewards, [ui["table"], ui["which"]])

    model_inputs = [form[p] for p in ("model.source", "model.precision", "model.chat_template",
                                      "data.system_prompt", "grpo.max_completion_length",
                                      "grpo.temperature")]

    def on_try(user, rs, smp, n_q, n_c, source, precision, template, system, max_new,
               temperature):
        if not rs:
            yield "❌ Add at least one reward first.", gr.skip()
            return
        rows = [r for r in (smp or []) if r.get("question")][:int(n_q)]
        if not rows:
            yield "❌ Choose data in step 2 first: the questions come from there.", gr.skip()
            return
        try:
            source = user.model_source(source)
        except AccessError as exc:
            yield f"❌ {exc}", gr.skip()
            return
        req = {"job": "generate", "source": source, "precision": precision,
               "chat_template": template, "system": system, "num": int(n_c),
               "questions": [r["question"] for r in rows],
               "max_new_tokens": int(max_new or 64), "temperature": float(temperature or 0.7)}
        yield "⏳ Starting the model…", gr.skip()
        try:
            for kind, value in studio.jobs.run(req):
                if kind == "progress":
                    yield f"⏳ {value}…", gr.skip()
                else:
                    table = score_table(rs, [r["question"] for r in rows],
                                        [r.get("answer") for r in rows], value["base"])
                    yield "✅ Scored with the current (untrained) model.", table
        except (JobError, RewardError) as exc:
            yield f"❌ {exc}", gr.skip()

    ui["try"].click(studio.handler(on_try), [rewards, sample, ui["n_q"], ui["n_c"]] + model_inputs,
                    [ui["try_status"], ui["try_table"]], concurrency_limit=1)
