"""The wizard: five steps as tabs, built from the step modules, wired once, served by Gradio."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from core.runs import RunManager

from . import step_data, step_export, step_model, step_rewards, step_train
from .machine import detect_machine
from .step_rewards import propose
from .watch import new_watch

CSS = """
.aha-bar { background: #e5e7eb; border-radius: 6px; height: 14px; overflow: hidden; }
.aha-bar > div { background: #f97316; height: 100%; transition: width .5s; }
.aha-progress-text { margin-top: 4px; font-size: 0.95em; }
.aha-samples pre.aha-completion { white-space: pre-wrap; margin: 2px 0; font-size: 0.9em; }
.aha-think { background: #e0f2fe; } .aha-answer { background: #dcfce7; font-weight: 600; }
.aha-sample { border: 1px solid #e5e7eb; border-radius: 6px; padding: 6px 10px; margin: 6px 0; }
.aha-prompt { font-weight: 600; } .aha-scores { color: #6b7280; font-size: 0.85em; }
.aha-health { border: 1px solid #f59e0b; background: #fffbeb; border-radius: 6px;
              padding: 6px 12px; margin: 6px 0; }
.aha-health ul { margin: 4px 0 0 0; } .aha-health-title { font-weight: 600; }
.aha-fix { color: #92400e; font-size: 0.9em; }
"""

# System fonts only: the page must render with no network at all.
THEME = gr.themes.Soft(primary_hue="orange",
                       font=["ui-sans-serif", "system-ui", "sans-serif"],
                       font_mono=["ui-monospace", "monospace"])


def build_app(runs_dir: str | Path = "runs") -> gr.Blocks:
    runs_dir = Path(runs_dir)
    manager = RunManager(runs_dir)
    machine = detect_machine()
    form: dict = {}
    with gr.Blocks(title="Aha Studio") as demo:
        gr.Markdown("# Aha Studio\nTeach a small language model with rewards (GRPO), step by step.")
        rewards = gr.State([])
        sample = gr.State([])
        watch = gr.State(new_watch())
        remembered = gr.BrowserState(None, storage_key="aha-studio-run")
        with gr.Tabs():
            with gr.Tab("1 · Model", id="model", elem_id="tab-model"):
                model_ui = step_model.build(form, machine)
            with gr.Tab("2 · Data", id="data", elem_id="tab-data"):
                data_ui = step_data.build(form)
            with gr.Tab("3 · Rewards", id="rewards", elem_id="tab-rewards"):
                rewards_ui = step_rewards.build()
            with gr.Tab("4 · Train", id="train", elem_id="tab-train"):
                train_ui = step_train.build(form)
            with gr.Tab("5 · Try and export", id="export", elem_id="tab-export"):
                export_ui = step_export.build()

        step_model.wire(model_ui, form, machine, [train_ui["estimate"]], demo)
        step_data.wire(data_ui, form, runs_dir / "uploads", sample, rewards)
        step_rewards.wire(rewards_ui, form, rewards, sample)
        step_train.wire(train_ui, form, rewards, watch, remembered, manager, machine, demo)
        step_export.wire(export_ui, manager, watch)

        def propose_if_empty(rs, smp):  # new data, no rewards chosen yet: suggest a set
            if rs or not smp:
                return gr.skip()
            return propose(smp)[0]

        sample.change(propose_if_empty, [rewards, sample], rewards)
    return demo


def launch(host: str = "127.0.0.1", port: int = 7860, runs_dir: str | Path = "runs") -> None:
    demo = build_app(runs_dir)
    demo.queue(default_concurrency_limit=4)
    demo.launch(server_name=host, server_port=port, theme=THEME, css=CSS, ssr_mode=False,
                max_file_size="500mb", footer_links=[], show_error=False,
                allowed_paths=[str(Path(runs_dir).resolve())])
