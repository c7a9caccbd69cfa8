"""The teacher's tab (classroom and Space modes): every run, the line of waiting runs, the limits,
stopping any run, all adapters in one download, and the run visitors may look at."""
from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import gradio as gr

from core.export import copy_adapter

from .access import AccessError, Limits, Policy
from .form import bounded_number
from .i18n import L, t
from .jobs import scratch_dir
from .step_export import adapter_dir
from .step_train import runs_table

# each limit's label, and whether it has a line of help (classroom.limit.<name>.label|info)
LIMITS_WITH_HELP = {"max_steps": False, "allowed_models": True, "concurrent_runs": True,
                    "upload_mb": True, "disk_quota_mb": False, "keep_checkpoints": True}


def require_teacher(user) -> None:
    if not user.sees_all:
        raise AccessError(t("classroom.error.teacher_only"))


def all_adapters_zip(policy: Policy, runs) -> Path:
    """One zip with each user's runs' adapters: USER/RUN/adapter_*.json|safetensors."""
    folder = scratch_dir("aha-adapters-") / "adapters"
    for st in runs:
        src = adapter_dir(st.run_dir)
        if src is None:
            continue
        owner = st.run_dir.parent.parent.name if policy.mode != "local" else "local"
        copy_adapter(src, folder / owner / st.run_dir.name)
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.make_archive(str(folder), "zip", root_dir=folder))


def build(policy: Policy) -> dict:
    gr.Markdown(L("classroom.heading"), elem_id="class-heading")
    with gr.Row():
        refresh = gr.Button(L("classroom.refresh"), size="sm", elem_id="class-refresh")
        pick = gr.Dropdown([], label=L("classroom.run.label"), elem_id="class-pick", scale=3)
        stop = gr.Button(L("classroom.stop.button"), variant="stop", elem_id="class-stop")
        publish = gr.Button(L("classroom.publish.button"), elem_id="class-publish")
    table = gr.Dataframe(interactive=False, elem_id="class-runs", max_height=400)
    message = gr.Markdown(elem_id="class-message")
    with gr.Row():
        download = gr.Button(L("classroom.download.button"), elem_id="class-download")
        files = gr.File(label=L("classroom.files.label"), interactive=False,
                        elem_id="class-files")
    gr.Markdown(L("classroom.limits.heading"), elem_id="class-limits-heading")
    fields = {}
    with gr.Row():
        for key, value in asdict(policy.limits).items():
            label = L(f"classroom.limit.{key}.label")
            info = L(f"classroom.limit.{key}.info") if LIMITS_WITH_HELP.get(key) else None
            if key == "allowed_models":
                fields[key] = gr.Textbox(", ".join(value), label=label, info=info,
                                         elem_id=f"limit-{key}")
            else:
                # a number out of range is brought back with one line, never the framework's
                # error on Save
                fields[key] = bounded_number(value, label=label, info=info, precision=0,
                                             minimum=0, maximum=1_000_000,
                                             elem_id=f"limit-{key}")
    save = gr.Button(L("classroom.limits.save"), variant="primary", elem_id="class-save")
    return {"refresh": refresh, "pick": pick, "stop": stop, "publish": publish, "table": table,
            "message": message, "download": download, "files": files, "fields": fields,
            "save": save}


def wire(ui: dict, studio, tab, demo_block) -> None:
    policy, manager = studio.policy, studio.manager
    keys = list(ui["fields"])

    def overview(user):
        require_teacher(user)
        table, choices = runs_table(studio, user)
        return table, gr.update(choices=choices)

    def on_load(user):
        if not user.sees_all:
            return gr.update(visible=False), gr.skip(), gr.skip()
        table, pick = overview(user)
        return gr.update(visible=True), table, pick

    demo_block.load(studio.handler(on_load), None, [tab, ui["table"], ui["pick"]])
    ui["refresh"].click(studio.handler(overview), None, [ui["table"], ui["pick"]])

    def on_stop(user, ref):
        require_teacher(user)
        if not ref:
            return t("classroom.need_run")
        run_dir = user.run_dir(ref)
        if manager.cancel(run_dir):
            return t("classroom.stop.dequeued", run=ref)
        if not manager.is_alive(run_dir):
            return t("classroom.stop.not_training", run=ref)
        manager.stop(run_dir)
        return t("classroom.stop.stopping", run=ref)

    ui["stop"].click(studio.handler(on_stop), ui["pick"], ui["message"])

    def on_publish(user, ref):
        require_teacher(user)
        if not ref:
            return t("classroom.need_run")
        run_dir = user.run_dir(ref)
        if adapter_dir(run_dir) is None:
            return t("classroom.publish.no_adapter")
        owner = policy.user_named(run_dir.parent.parent.name)
        policy.publish_example(owner, run_dir)
        return t("classroom.publish.done", run=ref)

    ui["publish"].click(studio.handler(on_publish), ui["pick"], ui["message"])

    def on_download(user):
        require_teacher(user)
        return str(all_adapters_zip(policy, studio.runs_of(user))), t("classroom.download.done")

    ui["download"].click(studio.handler(on_download), None, [ui["files"], ui["message"]])

    def on_save(user, *values):
        require_teacher(user)
        data = {}
        for key, value in zip(keys, values):
            data[key] = value if key == "allowed_models" else (0 if value is None else value)
        limits = Limits.from_dict(data)
        policy.save_limits(limits)
        manager.max_workers = limits.concurrent_runs
        manager.schedule()
        return t("classroom.limits.saved")

    ui["save"].click(studio.handler(on_save), [ui["fields"][k] for k in keys], ui["message"])
