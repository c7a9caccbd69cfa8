"""Step 4, Train: settings (beginner and advanced), start/stop/resume, live charts and samples.

Training runs in a worker process owned by `core.runs.RunManager`; this page only reads the run
directory's events on a timer, so reloading it or restarting the server loses nothing.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import gradio as gr

from core.config import ConfigError, RunConfig
from core.events import read_events
from core.health import settings_advice
from core.runs import RunManager

from . import watch as w
from .errors import friendly
from .form import (config_from_values, make_widget, rewards_from_config, section_paths,
                   values_from_config)
from .machine import Machine
from .presets import QUALITY_PATHS, quality_settings, quick_demo_config
from .step_model import ESTIMATE_PATHS, estimate

ADVICE_PATHS = ("train.learning_rate", "grpo.temperature", "grpo.num_generations")


def advice_markdown(values: dict) -> str:
    """Advice on the settings that decide whether a run keeps learning, as the fields change."""
    try:
        cfg = RunConfig.from_dict({"train": {"learning_rate": values["train.learning_rate"]},
                                   "grpo": {"temperature": values["grpo.temperature"],
                                            "num_generations": values["grpo.num_generations"]}})
    except (ConfigError, TypeError, ValueError):
        return ""  # the field's own check says what is wrong
    return "\n\n".join(f"⚠️ {a['message']} Try: {a['fix']}" for a in settings_advice(cfg))


ACTIVE = ("created", "loading_data", "loading_model", "ready", "resumed", "training")
CHART_TITLES = list(w.CHARTS)


def runs_table(manager: RunManager) -> tuple[dict, list]:
    rows, choices = [], []
    for st in manager.list():
        step = f"{st.step}/{st.max_steps or '?'}"
        rows.append([st.run_dir.name, st.name, w.STATE_WORDS.get(st.state, st.state).split(";")[0],
                     step, (st.error or "")[:120]])
        choices.append((f"{st.run_dir.name} · {st.state}", str(st.run_dir)))
    return {"headers": ["run", "name", "state", "step", "problem"], "data": rows}, choices


def fit_warning(verdict: str, confirmed: bool) -> str | None:
    """None when a run may start; else the one line that asks to confirm a run too big to fit."""
    if verdict != "too_big" or confirmed:
        return None
    return ("⛔ The memory estimate says this run will not fit on this machine. Tick "
            "*I understand it may not fit* and press Start again to try anyway.")


def wait_for_exit(manager: RunManager, run_dir: str, seconds: float = 30.0) -> bool:
    """A worker that has reported its end may still be shutting down; give it a moment."""
    deadline = time.monotonic() + seconds
    while manager.is_alive(run_dir):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def pick_run_to_show(manager: RunManager, remembered: str | None) -> str | None:
    """After a reload: the run this browser watched, else the newest one still training."""
    if remembered and (Path(remembered) / "config.yaml").exists():
        return remembered
    for st in manager.list():
        if st.alive:
            return str(st.run_dir)
    return None


def catch_up(watch: dict, manager: RunManager) -> tuple[dict, bool, bool]:
    """Read new events; (watch, new metrics?, new samples?)."""
    run_dir = watch.get("run_dir")
    if not run_dir:
        return watch, False, False
    events, offset = read_events(run_dir, watch["offset"])
    new = w.fold_events(watch, events, offset)
    if not events and new["state"] in ACTIVE and not manager.is_alive(run_dir):
        new = dict(new, state="interrupted", message=w.STATE_WORDS["interrupted"])
    return (new, any(e.get("type") == "metrics" for e in events),
            any(e.get("type") == "samples" for e in events))


def render(watch: dict, charts: bool = True, samples: bool = True) -> list:
    failed = watch.get("state") == "failed"
    out = [watch, w.progress_html(watch), w.status_line(watch),
           gr.update(visible=failed), watch.get("traceback") or ""]
    if charts:
        data = w.chart_data(watch["metrics"], watch.get("evals", []))
        out += [w.figure(t, data[t]) for t in CHART_TITLES]
    else:
        out += [gr.skip()] * len(CHART_TITLES)
    out.append(w.samples_html(watch["samples"]) if samples else gr.skip())
    out.append(w.health_html(watch))
    return out


def build(form: dict) -> dict:
    gr.Markdown("### 4 · Train")
    with gr.Row():
        demo = gr.Button("Quick demo on this machine", elem_id="train-demo")
        steps = gr.Slider(1, 500, 40, step=1, label="Steps", elem_id="train-steps", scale=2)
        quality = gr.Slider(1, 5, 3, step=1, label="Speed ⟷ quality", elem_id="train-quality",
                            info="Left: faster steps. Right: more answers per step, longer answers.",
                            scale=2)
    form["name"] = make_widget("name", "my-run")
    with gr.Accordion("Advanced: every GRPO setting", open=False, elem_id="train-advanced"):
        defaults = RunConfig()
        for section in ("grpo", "train", "generation"):
            gr.Markdown(f"**{section}**")
            paths = section_paths(section)
            for i in range(0, len(paths), 4):
                with gr.Row():
                    for path in paths[i:i + 4]:
                        form[path] = make_widget(path, values_from_config(defaults, [path])[0])
    estimate = gr.Markdown(elem_id="train-estimate")
    advice = gr.Markdown(elem_id="train-advice")
    with gr.Row():
        start = gr.Button("Start training", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
        resume = gr.Button("Resume", elem_id="train-resume")
    fit_confirm = gr.Checkbox(False, label="I understand it may not fit", visible=False,
                              elem_id="train-fit-confirm")
    with gr.Row():
        save_yaml = gr.Button("Save settings as YAML", size="sm", elem_id="train-save-yaml")
        load_yaml = gr.UploadButton("Load settings from YAML", file_types=[".yaml", ".yml"],
                                    size="sm", elem_id="train-load-yaml")
        yaml_file = gr.File(label="Settings file", elem_id="train-yaml-file",
                            interactive=False, height=80)
    message = gr.Markdown(elem_id="train-message")
    progress = gr.HTML(w.progress_html(w.new_watch()), elem_id="train-progress")
    status = gr.Markdown(elem_id="train-status")
    health = gr.HTML(w.health_html(w.new_watch()), elem_id="train-health")
    with gr.Accordion("Details", open=False, visible=False) as details:
        traceback = gr.Code(label="Traceback", language="python", elem_id="train-traceback")
    plots = []
    for i in range(0, len(CHART_TITLES), 3):
        with gr.Row():
            for title in CHART_TITLES[i:i + 3]:
                plots.append(gr.Plot(label=title, elem_id=f"chart-{len(plots)}"))
    samples = gr.HTML(w.samples_html([]), elem_id="train-samples")
    with gr.Accordion("Runs on this machine", open=True):
        with gr.Row():
            run_pick = gr.Dropdown([], label="Show run", elem_id="runs-pick", scale=3,
                                   allow_custom_value=True)
            refresh = gr.Button("Refresh", size="sm", scale=1, elem_id="runs-refresh")
        runs = gr.Dataframe(interactive=False, elem_id="runs-table", max_height=240)
    return {"demo": demo, "steps": steps, "quality": quality, "estimate": estimate,
            "advice": advice, "health": health,
            "start": start, "fit_confirm": fit_confirm, "stop": stop, "resume": resume, "save_yaml": save_yaml,
            "load_yaml": load_yaml, "yaml_file": yaml_file, "message": message,
            "progress": progress, "status": status, "details": details,
            "traceback": traceback, "plots": plots, "samples": samples, "run_pick": run_pick,
            "refresh": refresh, "runs": runs}


def wire(ui: dict, form: dict, rewards: gr.State, watch: gr.State, remembered: gr.BrowserState,
         manager: RunManager, machine: Machine, demo_block: gr.Blocks) -> None:
    paths = list(form)
    fields = [form[p] for p in paths]
    view = [watch, ui["progress"], ui["status"], ui["details"], ui["traceback"], *ui["plots"],
            ui["samples"], ui["health"]]
    runs_out = [ui["runs"], ui["run_pick"]]

    def runs_update(selected=None):
        table, choices = runs_table(manager)
        return table, gr.update(choices=choices, value=selected) if selected else \
            gr.update(choices=choices)

    def load_config(cfg: RunConfig):
        return (values_from_config(cfg, paths) + [rewards_from_config(cfg), cfg.train.max_steps])

    @friendly
    def on_demo():
        return load_config(quick_demo_config(machine.gpu)) + ["Loaded the quick demo: the built-in "
                                                      "model learns one-digit sums."]

    ui["demo"].click(on_demo, None, fields + [rewards, ui["steps"], ui["message"]])
    ui["steps"].input(lambda s: int(s), ui["steps"], form["train.max_steps"])
    ui["quality"].input(quality_settings, ui["quality"], [form[p] for p in QUALITY_PATHS])

    estimate_at = [paths.index(p) for p in ESTIMATE_PATHS]

    advice_fields = [form[p] for p in ADVICE_PATHS]

    def on_advice(*values):
        return advice_markdown(dict(zip(ADVICE_PATHS, values)))

    for comp in advice_fields:
        comp.change(on_advice, advice_fields, ui["advice"], show_progress="hidden", queue=False)

    @friendly
    def on_start(rs, confirmed, *values):
        keep = [gr.skip()] * (len(view) + 3)
        try:
            cfg = config_from_values(paths, list(values), rs)
        except ConfigError as exc:
            return [f"❌ {exc}", gr.skip()] + keep
        if not cfg.data.source:
            return ["❌ Choose data in step 2 first.", gr.skip()] + keep
        verdict, _ = estimate(machine, *[values[i] for i in estimate_at])
        warning = fit_warning(verdict, bool(confirmed))
        if warning:
            return [warning, gr.skip()] + keep[:-1] + [gr.update(visible=True, value=False)]
        run_dir = manager.create(cfg)
        manager.start(run_dir)
        new = w.new_watch(str(run_dir))
        started = f"Started **{run_dir.name}** in its own process."
        risky = settings_advice(cfg)
        if risky:
            started += " Note: " + " ".join(f"{a['message']} Try: {a['fix']}" for a in risky)
        return ([started, str(run_dir)] + render(new)
                + list(runs_update(str(run_dir))) + [gr.update(visible=False, value=False)])

    ui["start"].click(on_start, [rewards, ui["fit_confirm"]] + fields,
                      [ui["message"], remembered] + view + runs_out + [ui["fit_confirm"]],
                      concurrency_limit=1)

    @friendly
    def on_stop(wt):
        if not wt.get("run_dir") or not manager.is_alive(wt["run_dir"]):
            return "Nothing is training."
        manager.stop(wt["run_dir"])
        return "Stopping after the current step (a checkpoint is saved first)…"

    ui["stop"].click(on_stop, watch, ui["message"])

    @friendly
    def on_resume(wt):
        run_dir = wt.get("run_dir")
        if not run_dir:
            return "Choose a run to resume in the list below.", wt
        if manager.is_alive(run_dir):
            if wt.get("state") not in ("stopped", "finished", "failed"):
                return "This run is already training.", wt
            if not wait_for_exit(manager, run_dir):
                return "This run is still shutting down; press Resume again in a moment.", wt
        manager.start(run_dir, resume=True)
        return "Resuming from the last checkpoint…", dict(wt, state="created")

    ui["resume"].click(on_resume, watch, [ui["message"], watch])

    @friendly
    def on_tick(wt):
        new, metrics, samples = catch_up(wt, manager)
        if new == wt:
            return [gr.skip()] * len(view)
        return render(new, charts=metrics, samples=samples)

    timer = gr.Timer(2.0)
    timer.tick(on_tick, watch, view, show_progress="hidden", queue=False, api_name="watch_tick")

    @friendly
    def on_pick(run_dir):
        if not run_dir:
            return [gr.skip()] * (len(view) + 1)
        new, _, _ = catch_up(w.new_watch(run_dir), manager)
        return [run_dir] + render(new)

    ui["run_pick"].input(on_pick, ui["run_pick"], [remembered] + view, api_name="show_run")
    def on_refresh():
        return runs_update()

    ui["refresh"].click(on_refresh, None, runs_out, queue=False, api_name="runs_list")
    gr.Timer(15.0).tick(lambda: runs_update()[0], None, ui["runs"], show_progress="hidden",
                        queue=False)

    @friendly
    def on_load(remembered_dir):
        run_dir = pick_run_to_show(manager, remembered_dir)
        new, _, _ = catch_up(w.new_watch(run_dir), manager)
        return render(new) + list(runs_update(run_dir))

    demo_block.load(on_load, remembered, view + runs_out)

    @friendly
    def on_save(rs, *values):
        try:
            cfg = config_from_values(paths, list(values), rs)
        except ConfigError as exc:
            return gr.skip(), f"❌ {exc}"
        out = Path(tempfile.mkdtemp(prefix="aha-config-")) / f"{cfg.name or 'run'}.yaml"
        cfg.save(out)
        return str(out), "Settings saved: download the file below."

    ui["save_yaml"].click(on_save, [rewards] + fields, [ui["yaml_file"], ui["message"]])

    @friendly
    def on_load_yaml(path):
        try:
            cfg = RunConfig.load(path)
        except ConfigError as exc:
            return [gr.skip()] * (len(fields) + 2) + [f"❌ {exc}"]
        return load_config(cfg) + [f"Loaded settings from {Path(path).name}."]

    ui["load_yaml"].upload(on_load_yaml, ui["load_yaml"],
                           fields + [rewards, ui["steps"], ui["message"]])
