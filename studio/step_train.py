"""Step 4, Train: settings (beginner and advanced), start/stop/resume, live charts and samples.

Training runs in a worker process owned by `core.runs.RunManager`; this page only reads the run
directory's events on a timer, so reloading it or restarting the server loses nothing.
"""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import gradio as gr

from core.config import ConfigError, RunConfig
from core.events import read_events, read_progress
from core.health import settings_advice
from core.runs import RunManager, _slug

from . import watch as w
from .access import AccessError, User
from .errors import quietly, said_text, say
from .estimate import step_time_estimate
from .form import (LONG_CHOICE, bounded_slider, choice_width, config_from_values,
                   describe_changes, kind_of, make_widget, rewards_from_config, section_paths,
                   values_from_config)
from .i18n import L, t
from .jobs import scratch_dir
from .presets import QUALITY_PATHS, quality_settings, quick_demo_config
from .session import Studio, require_training
from .step_model import ESTIMATE_PATHS, estimate, estimate_parts

ADVICE_PATHS = ("train.learning_rate", "grpo.temperature", "grpo.num_generations",
                "grpo.prompts_per_step", "grpo.max_completion_length", "generation.engine")


def advice_markdown(values: dict, gpu: bool = False) -> str:
    """Advice on the settings that decide whether a run keeps learning, and which generation
    engine will run and why, as the fields change."""
    from core.engine_choice import pick_engine

    data: dict = {}
    for path in ADVICE_PATHS:
        section, name = path.split(".")
        data.setdefault(section, {})[name] = values[path]
    try:
        cfg = RunConfig.from_dict(data)
    except (ConfigError, TypeError, ValueError):
        return ""  # the field's own check says what is wrong
    lines = ["⚠️ " + w.advice_line(a) for a in settings_advice(cfg)]
    engine, code, why = pick_engine(cfg, gpu)
    lines.append(t("train.advice.engine", engine=engine,
                   why=w.engine_why_text({"code": code, **why})))
    return "\n\n".join(lines)


STEPS_RANGE = (1, 500)   # the beginner's Steps slider; more steps: the advanced max_steps box
QUALITY_RANGE = (1, 5)
AUTO_COLUMN = re.compile(r"data\.(question|answer|system)_column")
ACTIVE = ("created", "queued", "loading_data", "loading_model", "ready", "resumed", "training")
CHART_TITLES = list(w.CHARTS)  # the charts' ids; their texts: w.CHART_KEYS
STOPPING = "train.stop.stopping"  # the message while a run stops; replaced once it has stopped


def runs_table(studio: Studio, user: User, statuses=None) -> tuple[dict, list]:
    """The runs this user may see (`statuses`, when already listed), as a table and as
    (label, run ref) choices."""
    rows, choices = [], []
    shared_view = user.sees_all and studio.policy.shared
    for st in studio.runs_of(user) if statuses is None else statuses:
        ref = user.run_ref(st.run_dir)
        state = w.run_state_words(st)
        row = [st.run_dir.name, st.name, state, f"{st.step}/{st.max_steps or '?'}",
               said_text(st.said, st.error or "")[:120]]
        if shared_view:
            row.insert(0, ref.split("/")[0] if "/" in ref else user.name)
        rows.append(row)
        choices.append((f"{ref} · {state}", ref))
    headers = [t(f"runs.header.{h}") for h in ("run", "name", "state", "step", "problem")]
    return {"headers": ([t("runs.header.user")] if shared_view else []) + headers,
            "data": rows}, choices


def fit_warning(verdict: str, confirmed: bool) -> str | None:
    """None when a run may start; else the one line that asks to confirm a run too big to fit."""
    if verdict != "too_big" or confirmed:
        return None
    return "⛔ " + t("train.fit.warning")


def wait_for_exit(manager: RunManager, run_dir: str, seconds: float = 30.0) -> bool:
    """A worker that has reported its end may still be shutting down; give it a moment."""
    deadline = time.monotonic() + seconds
    while manager.is_alive(run_dir):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def active_run(user: User, statuses):
    """The user's own newest run that is training or waiting, among the listed `statuses`."""
    if not user.can_train:
        return None
    # a run that has written its end is over, though its process may take a moment to exit
    return next((st for st in statuses if (st.state == "queued" or
                                           (st.alive and st.state in ACTIVE))
                 and user.owns(st.run_dir)), None)


def pick_run_to_show(studio: Studio, user: User, remembered: str | None,
                     statuses) -> Path | None:
    """After a reload: the run this browser watched (if this user may still see it), else this
    user's newest run that is training or waiting, else (a visitor) the published example."""
    if remembered:
        try:
            return user.run_dir(str(remembered))
        except AccessError:
            pass
    if user.role == "visitor":
        return studio.policy.example_run()
    st = active_run(user, statuses)
    return st.run_dir if st else None


def catch_up(watch: dict, manager: RunManager) -> tuple[dict, bool, bool]:
    """Read new events; (watch, new metrics?, new samples?)."""
    run_dir = watch.get("run_dir")
    if not run_dir:
        return watch, False, False
    events, offset = read_events(run_dir, watch["offset"])
    new = w.fold_events(watch, events, offset)
    progress = read_progress(run_dir) if new["state"] in ACTIVE else None
    if progress != new.get("progress"):
        new["progress"] = progress
    if not events and new["state"] in ACTIVE and not manager.is_alive(run_dir):
        place = manager.position(run_dir)
        if place is not None:
            eta = w.queue_eta(manager, place)
            new = dict(new, state="queued", position=place, queue_eta=eta,
                       message=t("watch.progress.queued", position=place))
        else:
            new = dict(new, state="interrupted", message=w.state_words("interrupted"))
    return (new, any(e.get("type") == "metrics" for e in events),
            any(e.get("type") == "samples" for e in events))


def apply_policy(cfg: RunConfig, user: User) -> tuple[RunConfig, list[str]]:
    """The config as this user may run it: sources resolved inside their folder, the teacher's
    limits applied. Returns the notes to show (what was limited)."""
    limits, notes = user.policy.limits, []
    cfg.model.source = user.model_source(cfg.model.source)
    cfg.data.source = user.data_source(cfg.data.source)
    if cfg.data.eval_source:
        cfg.data.eval_source = user.data_source(cfg.data.eval_source)
    if user.policy.shared:
        if limits.max_steps and cfg.train.max_steps > limits.max_steps:
            cfg.train.max_steps = limits.max_steps
            notes.append(t("train.policy.steps_limited", steps=limits.max_steps))
        if limits.keep_checkpoints and cfg.train.keep_checkpoints > limits.keep_checkpoints:
            cfg.train.keep_checkpoints = limits.keep_checkpoints
        if cfg.train.processes > 1:  # a shared machine's GPUs are for everyone's runs
            cfg.train.processes = 1
            notes.append(t("train.policy.one_gpu"))
    return cfg, notes


def has_checkpoint(run_dir: Path) -> bool:
    root = Path(run_dir) / "checkpoints"
    return any((p / "trainer_state.json").exists() for p in root.glob("step-*"))


def render(watch: dict, charts: bool = True, samples: bool = True,
           cache: w.ChartCache | None = None) -> list:
    failed = watch.get("state") == "failed"
    out = [watch, w.progress_html(watch), w.status_line(watch),
           gr.update(visible=failed), watch.get("traceback") or ""]
    if charts:
        out += (cache or w.ChartCache(1)).figures(watch)
    else:
        out += [gr.skip()] * len(CHART_TITLES)
    out.append(w.samples_html(watch["samples"]) if samples else gr.skip())
    out.append(w.health_html(watch))
    return out


# "What is GRPO?": one round of training, drawn in the page's language (filled in on load)
def grpo_diagram() -> str:
    """An inline SVG of one GRPO round: a question, a group of answers with their rewards, each
    compared with the group's average, the model nudged a small step towards the better ones."""
    import html

    def box(x, y, width, height, fill, lines, bold=False):
        weight = ' font-weight="600"' if bold else ""
        top = y + height / 2 + 4 - 8 * (len(lines) - 1)
        text = "".join(f'<tspan x="{x + width / 2}" y="{top + 16 * i}">{html.escape(line)}'
                       f'</tspan>' for i, line in enumerate(lines))
        return (f'<rect x="{x}" y="{y}" width="{width}" height="{height}" rx="6" '
                f'fill="{fill}" stroke="#9ca3af"/><text text-anchor="middle" font-size="12"'
                f'{weight}>{text}</text>')

    def arrow(x1, y1, x2, y2):
        return (f'<path d="M{x1} {y1} L{x2} {y2}" fill="none" stroke="#6b7280" '
                f'stroke-width="1.5" marker-end="url(#aha-arrow)"/>')

    parts = ['<svg viewBox="0 0 830 200" width="100%" style="max-width:830px" role="img" '
             f'aria-label="{html.escape(t("train.grpo.svg.label"))}" '
             'xmlns="http://www.w3.org/2000/svg"><defs><marker id="aha-arrow" viewBox="0 0 8 8" '
             'refX="7" refY="4" markerWidth="7" markerHeight="7" orient="auto">'
             '<path d="M0 0 L8 4 L0 8 z" fill="#6b7280"/></marker></defs>',
             box(5, 90, 100, 40, "#e0f2fe", [t("train.grpo.svg.question")], True),
             f'<text x="460" y="16" text-anchor="middle" font-size="12" fill="#6b7280">'
             f'{html.escape(t("train.grpo.svg.average"))}</text>']
    for i, reward in enumerate((1, 0, 1, 0)):
        y = 28 + i * 42
        better = reward > 0.5
        parts += [arrow(107, 110, 143, y + 17),
                  box(145, y, 180, 34, "#ffffff",
                      [t("train.grpo.svg.answer", n=i + 1, reward=reward)]),
                  arrow(327, y + 17, 343, y + 17),
                  box(345, y, 230, 34, "#dcfce7" if better else "#fee2e2",
                      [t("train.grpo.svg.better" if better else "train.grpo.svg.worse")]),
                  arrow(577, y + 17, 598, 110)]
    parts += [box(600, 80, 225, 60, "#fff7ed",
                  [t("train.grpo.svg.update1"), t("train.grpo.svg.update2")], True), "</svg>"]
    return "".join(parts)


def healthy_curves() -> str:
    """An inline SVG of what healthy curves look like: the reward rising in a zigzag, the loss
    jumping around 0, KL small and growing slowly (a sketch, not data)."""
    import html
    import math

    steps = range(41)
    shapes = {  # (key, values, lowest, highest)
        "reward": [0.3 + 0.9 * (1 - math.exp(-k / 14)) + 0.08 * math.sin(k * 1.7) for k in steps],
        "loss": [0.05 * math.sin(k * 2.3) + 0.03 * math.cos(k * 5.1) for k in steps],
        "kl": [0.004 * k ** 1.2 + 0.01 * abs(math.sin(k)) for k in steps],
    }
    lows = {"reward": 0.0, "loss": -0.3, "kl": 0.0}
    highs = {"reward": 1.5, "loss": 0.3, "kl": 1.5}
    width, height, gap = 250, 110, 20
    parts = [f'<svg viewBox="0 0 {3 * width + 2 * gap} {height + 34}" width="100%" '
             f'style="max-width:{3 * width + 2 * gap}px" role="img" '
             f'aria-label="{html.escape(t("train.grpo.curves.label"))}" '
             'xmlns="http://www.w3.org/2000/svg">']
    for n, (key, values) in enumerate(shapes.items()):
        x0 = n * (width + gap)
        lo, hi = lows[key], highs[key]
        points = " ".join(f"{x0 + 8 + (width - 16) * k / 40:.1f},"
                          f"{22 + (height - 30) * (1 - (v - lo) / (hi - lo)):.1f}"
                          for k, v in zip(steps, values))
        parts += [f'<rect x="{x0}" y="0" width="{width}" height="{height + 30}" rx="6" '
                  'fill="#ffffff" stroke="#d1d5db"/>',
                  f'<text x="{x0 + 10}" y="16" font-size="12" font-weight="600">'
                  f'{html.escape(t("train.grpo.curves." + key))}</text>',
                  f'<polyline points="{points}" fill="none" stroke="#f97316" stroke-width="2"/>',
                  f'<text x="{x0 + width / 2}" y="{height + 24}" text-anchor="middle" '
                  f'font-size="11" fill="#6b7280">'
                  f'{html.escape(t("train.grpo.curves." + key + ".note"))}</text>']
    parts.append("</svg>")
    return "".join(parts)


def setting_rows(paths: list[str], room: int = 4) -> list[tuple[list[str], int]]:
    """The settings in rows of four places, in their order, each with its number of empty
    places; a list whose choices read as a phrase takes two places (make_widget gives it
    twice the width of a box)."""
    rows: list[tuple[list[str], int]] = []
    row: list[str] = []
    used = 0
    for path in paths:
        need = 2 if kind_of(path) == "choice" and choice_width(path) > LONG_CHOICE else 1
        if used + need > room:
            rows.append((row, room - used))
            row, used = [], 0
        row.append(path)
        used += need
    if row:
        rows.append((row, room - used))
    return rows


def build(form: dict, gpus: int = 0) -> dict:
    """The train step. `gpus`: the machine's; with more than one, 'GPUs to train on' shows."""
    gr.Markdown(L("train.heading"), elem_id="train-heading")
    with gr.Accordion(L("train.grpo.title"), open=False, elem_id="train-what-is-grpo"):
        gr.Markdown(L("train.grpo.body"), elem_id="train-grpo-body")
        grpo_picture = gr.HTML("", elem_id="train-grpo-diagram")  # drawn on load
    with gr.Row():
        demo = gr.Button(L("train.demo.button"), elem_id="train-demo")
        steps = bounded_slider(*STEPS_RANGE, 40, step=1, label=L("train.steps.label"),
                               info=L("train.steps.info"), elem_id="train-steps", scale=2)
        quality = bounded_slider(*QUALITY_RANGE, 3, step=1, label=L("train.quality.label"),
                                 elem_id="train-quality", info=L("train.quality.info"),
                                 scale=2)
    with gr.Group(visible=False, elem_id="preset-confirm") as preset_box:
        preset_changes = gr.Markdown(elem_id="preset-changes")
        with gr.Row():
            preset_apply = gr.Button(L("train.preset.apply"), variant="primary", size="sm",
                                     elem_id="preset-apply")
            preset_cancel = gr.Button(L("train.preset.cancel"), size="sm",
                                      elem_id="preset-cancel")
    preset_pending = gr.State(None)
    form["name"] = make_widget("name", "my-run")
    with gr.Accordion(L("train.advanced.title"), open=False, elem_id="train-advanced"):
        defaults = RunConfig()
        for section in ("grpo", "train", "generation"):
            gr.Markdown(L(f"train.section.{section}"), elem_id=f"train-section-{section}")
            for row, spare in setting_rows(section_paths(section)):
                with gr.Row():
                    for path in row:
                        extra = {"visible": gpus > 1} if path == "train.processes" else {}
                        form[path] = make_widget(path, values_from_config(defaults, [path])[0],
                                                 **extra)
                    if spare:  # the row's empty places keep the boxes in line with the others
                        gr.Column(scale=spare, min_width=0)
    estimate = gr.Markdown(elem_id="train-estimate")
    timing = gr.Markdown(elem_id="train-time")
    advice = gr.Markdown(elem_id="train-advice")
    with gr.Row():
        start = gr.Button(L("train.start"), variant="primary", elem_id="train-start")
        stop = gr.Button(L("train.stop"), variant="stop", elem_id="train-stop")
        resume = gr.Button(L("train.resume"), elem_id="train-resume")
    fit_confirm = gr.Checkbox(False, label=L("train.fit.confirm"), visible=False,
                              elem_id="train-fit-confirm")
    # shown when Start is pressed while one's own run still trains or waits
    again_confirm = gr.Checkbox(False, label=L("train.again.confirm"), visible=False,
                                elem_id="train-again-confirm")
    with gr.Row():
        save_yaml = gr.Button(L("train.yaml.save"), size="sm", elem_id="train-save-yaml")
        load_yaml = gr.UploadButton(L("train.yaml.load"), file_types=[".yaml", ".yml"],
                                    size="sm", elem_id="train-load-yaml")
        yaml_file = gr.File(label=L("train.yaml.file"), elem_id="train-yaml-file",
                            interactive=False, height=80)
    message = gr.Markdown(elem_id="train-message")
    # no words until the page has loaded: then they come in the page's language
    progress = gr.HTML(w.progress_html(w.new_watch(), text=False), elem_id="train-progress")
    status = gr.Markdown(elem_id="train-status")
    health = gr.HTML(w.health_html(w.new_watch()), elem_id="train-health")
    with gr.Accordion(L("train.details"), open=False, visible=False,
                      elem_id="train-details") as details:
        traceback = gr.Code(label=L("train.traceback"), language="python",
                            elem_id="train-traceback")
    plots = []
    for i in range(0, len(CHART_TITLES), 3):
        with gr.Row():
            for title in CHART_TITLES[i:i + 3]:
                plots.append(gr.Plot(label=L(f"{w.CHART_KEYS[title]}.title"),
                                     elem_id=f"chart-{len(plots)}"))
    samples = gr.HTML(w.samples_html([], text=False), elem_id="train-samples")
    with gr.Accordion(L("runs.title"), open=True, elem_id="runs-accordion"):
        with gr.Row():
            run_pick = gr.Dropdown([], label=L("runs.pick"), elem_id="runs-pick", scale=3)
            refresh = gr.Button(L("runs.refresh"), size="sm", scale=1, elem_id="runs-refresh")
            delete = gr.Button(L("runs.delete"), size="sm", scale=1, variant="stop",
                               elem_id="runs-delete")
        runs = gr.Dataframe(interactive=False, elem_id="runs-table", max_height=240)
    return {"demo": demo, "steps": steps, "quality": quality, "estimate": estimate,
            "timing": timing, "preset_box": preset_box, "preset_changes": preset_changes,
            "preset_apply": preset_apply, "preset_cancel": preset_cancel,
            "preset_pending": preset_pending,
            "advice": advice, "health": health,
            "start": start, "fit_confirm": fit_confirm, "again_confirm": again_confirm,
            "stop": stop, "resume": resume, "save_yaml": save_yaml,
            "load_yaml": load_yaml, "yaml_file": yaml_file, "message": message,
            "progress": progress, "status": status, "details": details,
            "traceback": traceback, "plots": plots, "samples": samples, "run_pick": run_pick,
            "refresh": refresh, "delete": delete, "runs": runs, "grpo_picture": grpo_picture}


def run_banner(user: User, statuses) -> tuple[str, str | None]:
    """The line at the top of every step while one of the user's runs trains or waits, and
    the run it names; empty when none does."""
    st = active_run(user, statuses)
    if st is None:
        return "", None
    if st.state == "queued":
        line = t("train.banner.waiting", name=st.name, run=st.run_dir.name, position=st.position)
    else:
        line = t("train.banner.training", name=st.name, run=st.run_dir.name, step=st.step,
                 total=st.max_steps or "?")
    return f"🏃 {line}", user.run_ref(st.run_dir)


TIME_PATHS = ("model.source", "grpo.prompts_per_step", "grpo.num_generations",
              "grpo.max_completion_length", "train.max_steps")


def time_estimate(studio: Studio, user: User, values: list) -> tuple[float | None, str]:
    if not user.can_train:
        return None, ""
    # the folders only: no run's events are read to list them
    return step_time_estimate(studio.manager.run_dirs([user.runs_dir]), *values)


def wire(ui: dict, form: dict, studio: Studio, rewards: gr.State, watch: gr.State,
         remembered: gr.BrowserState, demo_block: gr.Blocks, banner=None, tabs=None) -> None:
    manager, machine = studio.manager, studio.machine
    charts = w.ChartCache()  # one per server: pages watching the same run share its charts
    paths = list(form)
    fields = [form[p] for p in paths]
    view = [watch, ui["progress"], ui["status"], ui["details"], ui["traceback"], *ui["plots"],
            ui["samples"], ui["health"]]
    runs_out = [ui["runs"], ui["run_pick"]]

    def runs_update(user, selected=None, statuses=None):
        table, choices = runs_table(studio, user, statuses)
        return table, gr.update(choices=choices, value=selected) if selected else \
            gr.update(choices=choices)

    def load_config(user, cfg: RunConfig):
        cfg.data.source = user.display_source(cfg.data.source)
        # the slider cannot show more than its maximum; the max_steps box holds the true number
        return (values_from_config(cfg, paths) + [rewards_from_config(cfg),
                                                  min(cfg.train.max_steps, STEPS_RANGE[1])])

    def on_demo(user, rs, *values):
        """A preset never overwrites silently: it lists what it would change and asks."""
        new = load_config(user, quick_demo_config(machine.gpu))
        # an empty column in the preset means "detect it": the detected name is no change
        compared = [v if v not in ("", None) or not AUTO_COLUMN.fullmatch(p) else old
                    for p, v, old in zip(paths, new[:len(paths)], values)]
        changes = describe_changes(paths, list(values), compared, rs, new[len(paths)])
        if not changes:
            return [gr.update(visible=False), "", None, t("train.demo.nothing_to_change")]
        shown = changes[:14] + ([t("train.demo.more", n=len(changes) - 14)]
                                if len(changes) > 14 else [])
        text = (f"**{t('train.demo.would_change')}**\n\n"
                + "\n".join(f"- {line}" for line in shown))
        return [gr.update(visible=True), text, new, ""]

    preset_outs = [ui["preset_box"], ui["preset_changes"], ui["preset_pending"], ui["message"]]
    ui["demo"].click(studio.handler(on_demo), [rewards] + fields, preset_outs)

    def on_preset_apply(user, pending):
        if not pending:
            return [gr.skip()] * (len(fields) + 2) + [gr.update(visible=False), None, ""]
        return list(pending) + [gr.update(visible=False), None, t("train.demo.loaded")]

    ui["preset_apply"].click(studio.handler(on_preset_apply), ui["preset_pending"],
                             fields + [rewards, ui["steps"], ui["preset_box"],
                                       ui["preset_pending"], ui["message"]])

    def on_preset_cancel(user):
        return [gr.update(visible=False), None, t("train.demo.unchanged")]

    ui["preset_cancel"].click(studio.handler(on_preset_cancel), None,
                              [ui["preset_box"], ui["preset_pending"], ui["message"]])
    ui["steps"].input(lambda s: int(s), ui["steps"], form["train.max_steps"])
    ui["quality"].input(quality_settings, ui["quality"], [form[p] for p in QUALITY_PATHS])

    estimate_at = [paths.index(p) for p in ESTIMATE_PATHS]
    advice_fields = [form[p] for p in ADVICE_PATHS]

    def on_advice(user, *values):
        return advice_markdown(dict(zip(ADVICE_PATHS, values)), machine.gpu)

    for comp in advice_fields:
        comp.change(studio.handler(on_advice), advice_fields, ui["advice"],
                    show_progress="hidden", queue=False)

    def on_start(user, rs, confirmed, again, *values):
        keep = [gr.skip()] * (len(view) + 4)
        try:
            require_training(user)
            cfg = config_from_values(paths, list(values), rs)
            if not cfg.data.source:
                return ["❌ " + t("train.start.no_data"), gr.skip()] + keep
            cfg, notes = apply_policy(cfg, user)
            if cfg.train.processes > max(1, machine.gpus):
                return ["❌ " + t("train.start.too_many_gpus", processes=cfg.train.processes,
                                  gpus=machine.gpus), gr.skip()] + keep
            user.check_quota()
        except (ConfigError, AccessError) as exc:
            return [f"❌ {say(exc)}", gr.skip()] + keep
        busy = None if again else active_run(user, studio.runs_of(user))
        if busy is not None:  # a second press of Start is more often a slip than a wish
            return (["⚠️ " + t("train.again.warning", run=busy.run_dir.name), gr.skip()]
                    + keep[:-1] + [gr.update(visible=True, value=False)])
        chosen = [values[i] for i in estimate_at]
        verdict, _ = estimate(machine, *chosen)
        warning = fit_warning(verdict, bool(confirmed))
        if warning:
            return [warning, gr.skip()] + keep[:-2] + [gr.update(visible=True, value=False),
                                                       gr.skip()]
        parts = estimate_parts(machine, *chosen)
        per_step, _ = time_estimate(studio, user, [values[paths.index(p)] for p in TIME_PATHS])
        run_dir = manager.create(cfg, parent=user.runs_dir)
        place = manager.submit(run_dir, owner=user.name,
                               memory=parts["total"] if parts else None)
        new = w.new_watch(str(run_dir))
        new["estimate_step_s"] = per_step
        if place:
            text = t("train.start.queued", run=run_dir.name, position=place,
                     slots=manager.max_workers)
        else:
            text = t("train.start.started", run=run_dir.name)
        risky = settings_advice(cfg)
        if risky:
            notes += [w.advice_line(a) for a in risky]
        if notes:
            text += " " + t("train.start.note", notes=" ".join(notes))
        new, _, _ = catch_up(new, manager)
        ref = user.run_ref(run_dir)
        return ([text, ref] + render(new) + list(runs_update(user, ref))
                + [gr.update(visible=False, value=False)] * 2)

    ui["start"].click(studio.handler(on_start),
                      [rewards, ui["fit_confirm"], ui["again_confirm"]] + fields,
                      [ui["message"], remembered] + view + runs_out
                      + [ui["fit_confirm"], ui["again_confirm"]], concurrency_limit=1)

    def controlled_run(user, wt) -> Path:
        """The shown run, if this user may control it (their own; any for a teacher)."""
        run_dir = wt.get("run_dir")
        if not run_dir:
            raise AccessError(t("runs.error.none_shown"))
        run_dir = user.run_dir(user.run_ref(run_dir))
        if not (user.owns(run_dir) or (user.sees_all and studio.policy.mode != "local")) or \
                not user.can_train:
            raise AccessError(t("runs.error.not_yours"))
        return run_dir

    def on_stop(user, wt):
        run_dir = controlled_run(user, wt)
        if manager.cancel(run_dir):
            return t("train.stop.dequeued")
        if not manager.is_alive(run_dir):
            return t("train.stop.nothing")
        manager.stop(run_dir)
        return t(STOPPING)

    ui["stop"].click(studio.handler(on_stop), watch, ui["message"])

    def on_resume(user, wt):
        run_dir = controlled_run(user, wt)
        if manager.is_alive(run_dir):
            if wt.get("state") not in ("stopped", "finished", "failed"):
                return t("train.resume.already_training"), wt
            if not wait_for_exit(manager, run_dir):
                return t("train.resume.shutting_down"), wt
        if manager.position(run_dir) is not None:
            return t("train.resume.already_waiting"), wt
        user.check_quota()
        fresh = not has_checkpoint(run_dir)
        place = manager.submit(run_dir, owner=user.name, resume=True)
        what = t("train.resume.from_start") if fresh else t("train.resume.from_checkpoint")
        where = "; " + t("train.resume.in_line", position=place) if place else ""
        return f"{what}{where}…", dict(wt, state="created")

    ui["resume"].click(studio.handler(on_resume), watch, [ui["message"], watch])

    def stopped_message(new: dict, message) -> list:
        """"Stopping after the current step…" goes once the run has stopped (or ended)."""
        if message and str(message).strip() == t(STOPPING) and new.get("state") not in ACTIVE:
            if new.get("state") == "stopped":
                return [t("train.stop.done", step=new.get("step", 0))]
            return [""]
        return [gr.skip()]

    # the banner at the top of the page, defined below: no outputs without one
    banner_outs = [] if banner is None else [banner[0], banner[1], banner[3]]

    def banner_update(user, statuses) -> list:
        if banner is None:
            return []
        line, ref = run_banner(user, statuses)
        return [gr.update(visible=bool(line)), line, ref]

    delete_pending = gr.State(None)  # [run ref, time] of a Delete that asked to be confirmed

    def on_delete(user, wt, pending):
        """Deleting is for good: the first press asks, a second one within a minute deletes."""
        run_dir = controlled_run(user, wt)
        skip = [gr.skip()] * (len(view) + len(runs_out) + len(banner_outs))
        if manager.is_alive(run_dir):
            return [t("runs.delete.stop_first"), gr.skip()] + skip + [None]
        ref = user.run_ref(run_dir)
        if not pending or pending[0] != ref or time.time() - float(pending[1]) > 60:
            return ["⚠️ " + t("runs.delete.confirm", run=run_dir.name), gr.skip()] + skip \
                + [[ref, time.time()]]
        manager.cancel(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        statuses = studio.runs_of(user)
        return ([t("runs.delete.done", run=run_dir.name), None] + render(w.new_watch())
                + list(runs_update(user, statuses=statuses)) + banner_update(user, statuses)
                + [None])

    ui["delete"].click(studio.handler(on_delete), [watch, delete_pending],
                       [ui["message"], remembered] + view + runs_out + banner_outs
                       + [delete_pending])

    def on_tick(user, wt, message):
        new, metrics, samples = catch_up(wt, manager)
        after = stopped_message(new, message)
        if new == wt:
            if new.get("progress") and new.get("state") in w.RUNNING:
                # the time left shrinks while a phase runs on with nothing new to read
                return ([gr.skip(), w.progress_html(new)] + [gr.skip()] * (len(view) - 2) + after
                        + [gr.skip()] * len(banner_outs))
            return [gr.skip()] * len(view) + after + [gr.skip()] * len(banner_outs)
        # the watched run moved on (a step, or its end): the banner follows at once rather
        # than at its next quarter-minute refresh
        moved = any(new.get(k) != wt.get(k) for k in ("state", "step", "position"))
        top = (banner_update(user, studio.runs_of(user)) if moved
               else [gr.skip()] * len(banner_outs))
        return render(new, charts=metrics, samples=samples, cache=charts) + after + top

    timer = gr.Timer(2.0)
    # in the page's language (studio.handler); a failure changes nothing until the next tick
    timer.tick(quietly(studio.handler(on_tick), len(view) + 1 + len(banner_outs)),
               [watch, ui["message"]], view + [ui["message"]] + banner_outs,
               show_progress="hidden", queue=False, api_name="watch_tick")

    def on_pick(user, ref):
        if not ref:
            return [gr.skip()] * (len(view) + 1)
        run_dir = user.run_dir(ref)
        new, _, _ = catch_up(w.new_watch(str(run_dir)), manager)
        return [user.run_ref(run_dir)] + render(new, cache=charts)

    ui["run_pick"].input(studio.handler(on_pick), ui["run_pick"], [remembered] + view,
                         api_name="show_run")

    def on_refresh(user):
        return runs_update(user)

    ui["refresh"].click(studio.handler(on_refresh), None, runs_out, queue=False,
                        api_name="runs_list")
    # the runs table and the banner, every 15 s and when a page opens, from one listing
    def on_quarter(user):
        statuses = studio.runs_of(user)
        return [runs_update(user, statuses=statuses)[0]] + banner_update(user, statuses)

    gr.Timer(15.0).tick(studio.handler(on_quarter), None, [ui["runs"]] + banner_outs,
                        show_progress="hidden", queue=False)

    def on_load(user, remembered_ref):
        statuses = studio.runs_of(user)
        run_dir = pick_run_to_show(studio, user, remembered_ref, statuses)
        new, _, _ = catch_up(w.new_watch(str(run_dir) if run_dir else None), manager)
        selected = user.run_ref(run_dir) if run_dir else None
        return (render(new, cache=charts) + list(runs_update(user, selected, statuses))
                + banner_update(user, statuses))

    demo_block.load(studio.handler(on_load), remembered, view + runs_out + banner_outs)

    def on_grpo_picture(user):
        return grpo_diagram() + f'<p class="aha-curves-title">{t("train.grpo.curves.title")}</p>' \
            + healthy_curves()

    demo_block.load(studio.handler(on_grpo_picture), None, ui["grpo_picture"],
                    show_progress="hidden", queue=False)

    time_fields = [form[p] for p in TIME_PATHS]

    def on_time(user, *values):
        return time_estimate(studio, user, list(values))[1]

    for comp in time_fields:
        comp.change(studio.handler(on_time), time_fields, ui["timing"], show_progress="hidden",
                    queue=False)
    demo_block.load(studio.handler(on_time), time_fields, ui["timing"], show_progress="hidden")

    if banner is not None:
        button, ref_state = banner[2], banner[3]

        def on_watch(user, ref):
            picked = on_pick(user, ref)
            return [gr.Tabs(selected="train")] + list(picked)

        button.click(studio.handler(on_watch), ref_state, [tabs, remembered] + view)

    def on_save(user, rs, *values):
        try:
            cfg = config_from_values(paths, list(values), rs)
        except ConfigError as exc:
            return gr.skip(), f"❌ {say(exc)}"
        out = scratch_dir("aha-config-") / f"{_slug(cfg.name or 'run')}.yaml"
        cfg.save(out)
        return str(out), t("train.yaml.saved")

    ui["save_yaml"].click(studio.handler(on_save), [rewards] + fields,
                          [ui["yaml_file"], ui["message"]])

    def on_load_yaml(user, path):
        try:
            cfg = RunConfig.load(path)
        except ConfigError as exc:
            return [gr.skip()] * (len(fields) + 2) + [f"❌ {say(exc)}"]
        return load_config(user, cfg) + [t("train.yaml.loaded", file=Path(path).name)]

    ui["load_yaml"].upload(studio.handler(on_load_yaml), ui["load_yaml"],
                           fields + [rewards, ui["steps"], ui["message"]])
