"""The wizard: five steps as tabs, built from the step modules, wired once, served by Gradio."""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from core.runs import RunManager, pin_process

from . import step_classroom, step_data, step_export, step_model, step_rewards, step_train
from .access import Policy
from .jobs import JobPool, default_job_slots, sweep_scratch
from .machine import detect_machine
from .session import Studio
from .draft import load_draft, save_draft
from .i18n import (DEFAULT, LANGUAGES, PAGE_LANG_JS, SWITCH_JS, L, gradio_i18n, lang_of,
                   put_head_script_first, t)
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
.aha-coach { border: 1px solid #bfdbfe; background: #eff6ff; border-radius: 6px;
             padding: 6px 12px; margin: 6px 0; font-size: 0.92em; }
.aha-coach ul { margin: 4px 0 0 0; }
.aha-hidden { display: none !important; }
.reward-item { border: 1px solid #fed7aa; border-radius: 8px; padding: 4px 8px;
               margin-bottom: 8px; }
.reward-item-title { font-weight: 600; }
.aha-score-table th { white-space: nowrap; min-width: 5.5em; }
.aha-score-table td { min-width: 4.5em; }
#banner-run { border: 1px solid #fdba74; background: #fff7ed; border-radius: 6px;
              padding: 4px 12px; }
.aha-chat-label { font-weight: 600; }
/* Back / Next at the foot of a step: one line each, as wide as their words (German is long) */
button[id^="nav-"] { white-space: nowrap; min-width: max-content; }
"""

# System fonts only: the page must render with no network at all.
THEME = gr.themes.Soft(primary_hue="orange",
                       font=["ui-sans-serif", "system-ui", "sans-serif"],
                       font_mono=["ui-monospace", "monospace"])


def build_app(policy: Policy | str | Path = "runs", manager: RunManager | None = None) -> gr.Blocks:
    """The wizard for one server. `policy` says the mode (local, classroom, Space); a plain
    folder means the local, single-user studio on that runs folder."""
    if not isinstance(policy, Policy):
        policy = Policy("local", policy)
    machine = detect_machine()
    if manager is None:
        manager = manager_for(policy, machine)
    studio = Studio(policy, manager, machine,
                    JobPool(default_job_slots(machine.available_bytes, machine.gpu)))
    manager.start_scheduler(chores=[sweep_scratch, studio.jobs.reap])
    form: dict = {}
    with gr.Blocks(title="Aha Studio", delete_cache=(1800, 3600)) as demo:
        with gr.Row(equal_height=True):
            gr.Markdown(L("app.title"), elem_id="app-title")
            language = gr.Radio([(name, code) for code, name in LANGUAGES.items()],
                                value=DEFAULT, label=L("app.language"), show_label=False, container=False, scale=0,
                                min_width=240, elem_id="language")
        if policy.mode == "space":
            with gr.Row():
                LoginButton(elem_id="login")
            if not policy.persistent:
                gr.Markdown(L("app.space_not_persistent"), elem_id="banner-storage")
        who = gr.Markdown(elem_id="who")
        with gr.Row(visible=False, elem_id="banner-row") as banner_row:
            banner = gr.Markdown(elem_id="banner-run")
            banner_watch = gr.Button(L("app.banner.watch"), size="sm", scale=0, elem_id="banner-watch")
        banner_ref = gr.State(None)
        loaded = gr.HTML("", elem_id="aha-ready", elem_classes=["aha-hidden"])
        rewards = gr.State([])
        sample = gr.State([])
        watch = gr.State(new_watch())
        remembered = gr.BrowserState(None, storage_key="aha-studio-run")
        with gr.Tabs() as tabs:
            with gr.Tab(L("app.tab.model"), id="model", elem_id="tab-model"):
                model_ui = step_model.build(form, machine)
                steps_nav(tabs, None, ("data", "app.nav.next_data"))
            with gr.Tab(L("app.tab.data"), id="data", elem_id="tab-data"):
                data_ui = step_data.build(form)
                steps_nav(tabs, ("model", "app.nav.back_model"), ("rewards", "app.nav.next_rewards"))
            with gr.Tab(L("app.tab.rewards"), id="rewards", elem_id="tab-rewards"):
                rewards_ui = step_rewards.build(studio, rewards)
                steps_nav(tabs, ("data", "app.nav.back_data"), ("train", "app.nav.next_train"))
            with gr.Tab(L("app.tab.train"), id="train", elem_id="tab-train"):
                train_ui = step_train.build(form, machine.gpus)
                to_export = steps_nav(tabs, ("rewards", "app.nav.back_rewards"),
                                      ("export", "app.nav.next_export"))
            with gr.Tab(L("app.tab.export"), id="export", elem_id="tab-export") as export_tab:
                export_ui = step_export.build()
                export_ui["tab"], export_ui["next"] = export_tab, to_export
                steps_nav(tabs, ("train", "app.nav.back_train"), None)
            if policy.shared:
                with gr.Tab(L("app.tab.classroom"), id="classroom", elem_id="tab-classroom",
                            visible=False) as class_tab:
                    class_ui = step_classroom.build(policy)

        step_model.wire(model_ui, form, studio, [train_ui["estimate"]], demo)
        step_data.wire(data_ui, form, studio, sample, rewards)
        step_rewards.wire(rewards_ui, form, studio, rewards, sample)
        step_train.wire(train_ui, form, studio, rewards, watch, remembered, demo,
                        banner=(banner_row, banner, banner_watch, banner_ref), tabs=tabs)
        step_export.wire(export_ui, studio, watch)
        if policy.shared:
            step_classroom.wire(class_ui, studio, class_tab, demo)

        def greet(user):
            if policy.mode == "local":
                return ""
            if user.role == "visitor":
                return t("app.visitor")
            link = " · [" + t("app.sign_out") + "](/logout)" if policy.mode == "classroom" else ""
            return t("app.signed_in", name=user.name, role=t("app.role." + user.role)) + link

        demo.load(studio.handler(greet), None, who)
        # the switch shows the page's language; choosing another reloads the page in it
        demo.load(None, None, language, js=PAGE_LANG_JS)
        language.input(None, language, language, js=SWITCH_JS)

        def propose_if_empty(rs, smp):  # new data, no rewards chosen yet: suggest a set
            if rs or not smp:
                return gr.skip()
            return propose(smp)[0]

        sample.change(propose_if_empty, [rewards, sample], rewards)
        keep_the_form(studio, form, model_ui, train_ui, rewards, loaded, demo)
    demo.studio = studio
    return demo



class LoginButton(gr.LoginButton):
    """Gradio's Hugging Face sign-in button, in the page's language: "Sign in" before, "Sign out
    (name)" after. (Gradio's own tells the two apart by comparing its text with the English
    default, so its click and load are replaced, doing the same.)"""

    def __init__(self, **kwargs):
        super().__init__(value=L("app.login"), **kwargs)

    # Gradio reads a component's kind and its props from its class: the name of its base class
    # (for this subclass 'loginbutton', which has no frontend: the page would wait for a custom
    # component forever) and the parameters of its __init__ (here only `value`: elem_id, icon
    # and variant would be lost). Both are taken from gr.LoginButton.
    def get_block_name(self) -> str:
        return "button"

    def get_config(self, cls=None):
        return super().get_config(cls or gr.LoginButton)

    def activate(self):
        signed_out = [t("app.login", lang) for lang in LANGUAGES] + [str(self.value)]
        target = json.dumps(self.page)
        js = """(value) => {
  const out = %s.includes(value);
  const uri = (out ? '/login/huggingface' : '/logout') + '?_target_url=/' + %s;
  window.parent?.postMessage({type: "SET_SCROLLING", enabled: true}, "*");
  setTimeout(() => { window.location.assign(uri + window.location.search); }, 500);
}""" % (json.dumps(signed_out), target)
        self.click(fn=None, inputs=[self], outputs=None, js=js)
        self.attach_load_event(self._check_login_status, None)

    def _check_login_status(self, request: gr.Request):
        from gradio import oauth

        lang = lang_of(request)
        session = getattr(request, "session", None) or getattr(request.request, "session", None)
        info = oauth._get_valid_oauth_info_from_session(session) if session is not None else None
        if info is None:
            return gr.update(value=t("app.login", lang), interactive=True)
        name = info["userinfo"]["preferred_username"]
        return gr.update(value=t("app.logout", lang, name=name), interactive=True)

def steps_nav(tabs: gr.Tabs, back: tuple[str, str] | None,
              forward: tuple[str, str] | None) -> gr.Button | None:
    """Back / Next buttons at the foot of a step; returns the Next button."""
    button = None
    with gr.Row():
        for target, label, variant in ((*back, "secondary") if back else (None, None, None),
                                       (*forward, "primary") if forward else (None, None, None)):
            if target is None:
                continue
            button = gr.Button(L(label), size="sm", variant=variant, scale=0,
                               elem_id=f"nav-{'next' if variant == 'primary' else 'back'}-{target}")
            button.click(_select(target), None, tabs, queue=False, show_progress="hidden")
    return button


def _select(tab_id: str):
    return lambda: gr.Tabs(selected=tab_id)


def keep_the_form(studio: Studio, form: dict, model_ui: dict, train_ui: dict,
                  rewards: gr.State, loaded: gr.HTML, demo: gr.Blocks) -> None:
    """Nothing typed is lost: each change goes to the user's draft, and a page that opens gets
    the draft back (studio/draft.py)."""
    keep = dict(form)
    keep.update({"studio.model_preset": model_ui["preset"], "studio.steps": train_ui["steps"],
                 "studio.quality": train_ui["quality"]})
    names = list(keep)
    widgets = [keep[n] for n in names]

    def on_change(user, rs, *values):
        if not user.can_train:
            return
        try:
            save_draft(user.home, dict(zip(names, values)), rs)
        except OSError:
            pass  # a full or read-only disk: the page keeps working, the draft waits

    gr.on([w.change for w in widgets] + [rewards.change], studio.handler(on_change),
          [rewards] + widgets, None, queue=False, show_progress="hidden",
          trigger_mode="always_last")

    def on_open(user):
        draft = load_draft(user.home, names) if user.can_train else None
        if not draft:
            return [gr.skip()] * (len(widgets) + 1) + ['<span data-draft="none"></span>']
        fields, rs = draft
        out = [restorable(name, fields[name]) if name in fields else gr.skip()
               for name in names]
        return out + [rs, '<span data-draft="restored"></span>']

    demo.load(studio.handler(on_open), None, widgets + [rewards, loaded])


SLIDERS = {"studio.steps": step_train.STEPS_RANGE, "studio.quality": step_train.QUALITY_RANGE}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def restorable(name: str, value):
    """A draft's value for its widget, or a skip when the widget could not show it (a choice
    that is no longer offered, a number that is not one)."""
    from .form import field_of, kind_of, optional
    from .step_model import PRESETS

    if name == "studio.model_preset":
        return value if value in {s for _, s in PRESETS} else gr.skip()
    if name in SLIDERS:
        lo, hi = SLIDERS[name]
        return value if _number(value) and lo <= value <= hi else gr.skip()
    try:
        kind = kind_of(name)
    except (KeyError, AttributeError):  # not a config field
        return gr.skip()
    if name.startswith("data.") and name.endswith("_column"):
        return value if isinstance(value, str) else gr.skip()
    if kind == "choice":
        return value if value in field_of(name).metadata["choices"] else gr.skip()
    if kind == "bool":
        return value if isinstance(value, bool) else gr.skip()
    if kind in ("int", "float") and not optional(name):
        meta = field_of(name).metadata
        lo, hi = meta.get("min"), meta.get("max")
        fits = _number(value) and (lo is None or value >= lo) and (hi is None or value <= hi)
        return value if fits else gr.skip()
    return value if isinstance(value, str) else gr.skip()


def manager_for(policy: Policy, machine) -> RunManager:
    """The run manager of a server: a shared one keeps a core for answering its pages while
    runs train, and trains at most the teacher's number of runs at once."""
    return RunManager(policy.root, max_workers=policy.limits.concurrent_runs
                      if policy.shared else default_workers(machine),
                      memory_budget=machine.total_bytes * 0.85,
                      reserve_cores=1 if policy.shared and not machine.gpu else 0)


def default_workers(machine) -> int:
    """Training workers at once on a local studio: one (a GPU, or a CPU it would share)."""
    return 1


def launch(host: str = "127.0.0.1", port: int = 7860, runs_dir: str | Path = "runs",
           policy: Policy | None = None) -> None:
    policy = policy or Policy("local", runs_dir)
    demo = build_app(policy)
    # a shared server keeps to its own core(s); its workers train on the others
    pin_process(demo.studio.manager.server_cpus)
    demo.queue(default_concurrency_limit=4)
    put_head_script_first()
    auth = policy.check_login if policy.mode == "classroom" else None
    demo.launch(server_name=host, server_port=port, theme=THEME, css=CSS, ssr_mode=False,
                max_file_size=f"{policy.limits.upload_mb}mb" if policy.shared else "500mb",
                footer_links=[], i18n=gradio_i18n(),
                show_error=True, auth=auth,
                auth_message=" / ".join(t("app.auth_message", lang) for lang in LANGUAGES))
