"""Step 5, Try and export: ask the trained and the base model side by side; take the result home."""
from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path

import gradio as gr

from core.config import ConfigError, RunConfig
from core.export import QUANTS, converter, copy_adapter, default_out
from core.modelcard import collapse_note, saved_evaluation, write_model_card
from core.runs import run_processes

from .access import AccessError
from .errors import friendly, say
from .evaluation import changed_table, summary
from .evaluation import figure as evaluation_figure
from .form import cli_command
from .step_data import size_text
from .i18n import L, lang_of, speaking, t
from .jobs import JobError, model_threads, scratch_dir
from .watch import run_state_words



def adapter_dir(run_dir: str | Path) -> Path | None:
    """The final adapter, else the newest checkpoint's (a stopped run has only those)."""
    run_dir = Path(run_dir)
    final = run_dir / "adapter"
    if (final / "adapter_model.safetensors").exists():
        return final
    ckpts = [p for p in (run_dir / "checkpoints").glob("step-*")
             if (p / "adapter_model.safetensors").exists() and p.name[5:].isdigit()]
    return max(ckpts, key=lambda p: int(p.name[5:]), default=None)


def adapter_files(run_dir: str | Path, choice: str | None = None) -> Path:
    """A fresh folder with just the adapter's files (no optimizer state), named after the run:
    the chosen checkpoint's, else the final adapter's, else the newest checkpoint's."""
    run_dir = Path(run_dir)
    if choice:
        src, step = chosen_adapter(run_dir, choice)
    else:
        src, step = adapter_dir(run_dir), None
        if src is None:
            raise FileNotFoundError(t("export.error.no_adapter_train_more"))
    folder = scratch_dir("aha-export-") / export_name(run_dir, step, "adapter")
    copy_adapter(src, folder)
    # the run's own card, as `python -m core export` writes it: a checkpoint's folder holds the
    # library's empty template, and any evaluation since training belongs on it
    label = "final" if src.name == "adapter" else src.name
    write_model_card(folder, run_dir, RunConfig.load(run_dir / "config.yaml"),
                     note=collapse_note(run_dir) if label == "final" else "", checkpoint=label)
    return folder


def export_name(run_dir: Path, step: int | None, fmt: str, quant: str = QUANTS[0]) -> str:
    """The name of an export's folder, as `python -m core export` names it."""
    return default_out(run_dir, fmt, quant, "final" if step is None else f"step-{step}").name


def zip_adapter(run_dir: str | Path, choice: str | None = None) -> Path:
    folder = adapter_files(run_dir, choice)
    return Path(shutil.make_archive(str(folder), "zip", root_dir=folder))


def push_to_hub(folder: Path, repo_id: str, token: str) -> str:
    from huggingface_hub import HfApi

    repo_id, token = (repo_id or "").strip(), (token or "").strip()
    if repo_id.count("/") != 1:
        raise ValueError(t("export.push.error.repo"))
    if not token:
        raise ValueError(t("export.push.error.token"))
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    except Exception as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(t("export.push.error.failed", reason=text[:200])) from None
    return f"https://huggingface.co/{repo_id}"


def checkpoint_choices(run_dir: Path) -> list[tuple[str, str]]:
    """(label, value) for the adapters of a run: the final one, then each checkpoint, newest
    first."""
    out = []
    if (run_dir / "adapter" / "adapter_model.safetensors").exists():
        out.append((t("export.checkpoint.final"), "final"))
    steps = sorted((int(p.name[5:]) for p in (run_dir / "checkpoints").glob("step-*")
                    if p.name[5:].isdigit() and (p / "adapter_model.safetensors").exists()),
                   reverse=True)
    return out + [(t("export.checkpoint.step", step=n), f"step-{n}") for n in steps]


def chosen_adapter(run_dir: Path, choice: str | None) -> tuple[Path, int | None]:
    """(adapter folder, its checkpoint's step or None for the final adapter) for a choice
    offered by checkpoint_choices."""
    if choice and choice != "final":
        if not re.fullmatch(r"step-\d{1,9}", str(choice)):
            raise AccessError(t("export.error.no_such_checkpoint"))
        path = run_dir / "checkpoints" / choice
        if (path / "adapter_model.safetensors").exists():
            return path, int(choice[5:])
        raise AccessError(t("export.error.checkpoint_gone"))
    found = adapter_dir(run_dir)
    if found is None:
        raise AccessError(t("export.error.no_adapter"))
    if found.name == "adapter":
        return found, None
    return found, int(found.name[5:])


def run_choices(studio, user) -> list[tuple[str, str]]:
    """(label, run ref) of the runs with an adapter this user may see."""
    return [(f"{user.run_ref(st.run_dir)} · {run_state_words(st)}", user.run_ref(st.run_dir))
            for st in studio.runs_of(user) if adapter_dir(st.run_dir) is not None]


def build() -> dict:
    gr.Markdown(L("export.heading"), elem_id="export-heading")
    with gr.Row():
        run = gr.Dropdown([], label=L("export.run.label"), elem_id="export-run", scale=3)
        refresh = gr.Button(L("export.refresh"), size="sm", scale=1, elem_id="export-refresh")
    checkpoint = gr.Dropdown([], label=L("export.checkpoint.label"), elem_id="export-checkpoint",
                             info=L("export.checkpoint.info"))
    question = gr.Textbox(label=L("chat.question.label"), elem_id="chat-question",
                          placeholder=L("chat.question.placeholder"))
    ask = gr.Button(L("chat.ask"), elem_id="chat-ask")
    chat_status = gr.Markdown(elem_id="chat-status")
    with gr.Row():
        # a copy button on each answer, no toolbar over the newest question; each side's name
        # above it (a chat's own label floats over the answers once they scroll)
        with gr.Column():
            gr.Markdown(L("chat.trained.label"), elem_classes="aha-chat-label")
            trained = gr.Chatbot(label=L("chat.trained.label"), show_label=False,
                                 elem_id="chat-trained", height=340, buttons=["copy"])
        with gr.Column():
            gr.Markdown(L("chat.base.label"), elem_classes="aha-chat-label")
            base = gr.Chatbot(label=L("chat.base.label"), show_label=False, elem_id="chat-base",
                              height=340, buttons=["copy"])
    gr.Markdown(L("eval.section"), elem_id="eval-section")
    eval_btn = gr.Button(L("eval.button"), elem_id="eval-run")
    eval_status = gr.Markdown(elem_id="eval-status")
    eval_chart = gr.Plot(elem_id="eval-chart", show_label=False, visible=False)
    eval_table = gr.Dataframe(interactive=False, wrap=True, max_height=420,
                              label=L("eval.table.label"), elem_id="eval-changed",
                              visible=False)
    gr.Markdown(L("export.section"), elem_id="export-section")
    with gr.Row():
        zip_btn = gr.Button(L("export.zip.button"), elem_id="export-zip")
        merge_btn = gr.Button(L("export.merge.button"), elem_id="export-merge")
        yaml_btn = gr.Button(L("export.yaml.button"), elem_id="export-yaml")
    with gr.Row(equal_height=True):
        ready = converter() is not None  # llama.cpp installed on this server
        quant = gr.Dropdown([(L(f"export.gguf.type.{q}"), q) for q in QUANTS],
                            value=QUANTS[0], label=L("export.gguf.type.label"),
                            info=L("export.gguf.type.info" if ready else "export.fail.no_converter"),
                            elem_id="export-quant", scale=2, interactive=ready)
        gguf_btn = gr.Button(L("export.gguf.button"), elem_id="export-gguf", scale=1,
                             interactive=ready)
    files = gr.File(label=L("export.files.label"), file_count="multiple", interactive=False,
                    elem_id="export-files")
    export_status = gr.Markdown(elem_id="export-status")
    command = gr.Code(label=L("export.command.label"), language="shell",
                      elem_id="export-command")
    with gr.Accordion(L("export.push.heading"), open=False, elem_id="export-hub"):
        repo = gr.Textbox(label=L("export.push.repo.label"), elem_id="export-repo",
                          info=L("export.push.repo.info"),
                          placeholder=L("export.push.repo.placeholder"))
        token = gr.Textbox(label=L("export.push.token.label"), type="password",
                           elem_id="export-token", info=L("export.push.token.info"))
        push = gr.Button(L("export.push.button"), elem_id="export-push")
        push_status = gr.Markdown(elem_id="export-push-status")
    return {"run": run, "refresh": refresh, "checkpoint": checkpoint, "question": question,
            "ask": ask,
            "chat_status": chat_status, "trained": trained, "base": base, "zip": zip_btn,
            "merge": merge_btn, "yaml": yaml_btn, "quant": quant, "gguf": gguf_btn,
            "eval": eval_btn, "eval_status": eval_status, "eval_chart": eval_chart,
            "eval_table": eval_table,
            "files": files, "status": export_status,
            "command": command, "repo": repo, "token": token, "push": push,
            "push_status": push_status}


def wire(ui: dict, studio, watch: gr.State) -> None:
    policy = studio.policy

    def choices(user, wt=None, chosen=None):
        """The runs to choose from; the one chosen stays while it is there, else the watched
        run, else the newest."""
        opts = run_choices(studio, user)
        refs = {v for _, v in opts}
        current = (wt or {}).get("run_dir")
        current = user.run_ref(current) if current else None
        value = chosen if chosen in refs else current if current in refs else \
            (opts[0][1] if opts else None)
        return gr.update(choices=opts, value=value)

    ui["refresh"].click(studio.handler(choices), watch, ui["run"], queue=False)
    # the runs are listed whenever the step opens (its tab or the Next button): the run just
    # trained is there without pressing Refresh, and one chosen before stays chosen. Not when
    # the page loads: choosing a run loads its model, which a page on step 1 does not need.
    for arrive in (ui["tab"].select, ui["next"].click):
        arrive(studio.handler(choices), [watch, ui["run"]], ui["run"], queue=False,
               show_progress="hidden")

    def on_watch(user, wt):
        return choices(user, wt) if wt.get("state") in ("stopped", "finished") else gr.skip()

    watch.change(studio.handler(on_watch), watch, ui["run"], queue=False)

    def on_run(user, ref):
        if not ref:
            return ""
        run_dir = user.run_dir(ref)
        processes = run_processes(run_dir)
        if policy.shared:
            return cli_command(f"{run_dir.name}/config.yaml", run_dir.name, processes)
        return cli_command(str(run_dir / "config.yaml"), str(run_dir), processes)

    ui["run"].change(studio.handler(on_run), ui["run"], ui["command"])

    def on_run_checkpoints(user, ref):
        if not ref:
            return gr.update(choices=[], value=None)
        options = checkpoint_choices(user.run_dir(ref))
        return gr.update(choices=options, value=options[0][1] if options else None)

    checkpoints_shown = ui["run"].change(studio.handler(on_run_checkpoints), ui["run"],
                                         ui["checkpoint"])

    def chat_request(user, ref, choice, questions: list[str]) -> tuple[dict, int | None, str]:
        """The model request for the chat on a run's checkpoint: (request, step, run name)."""
        run_dir = user.run_dir(ref)
        adapter, step = chosen_adapter(run_dir, choice)
        cfg = RunConfig.load(run_dir / "config.yaml")
        training = bool(studio.manager.running())
        req = {"job": "generate", "source": cfg.model.source, "precision": cfg.model.precision,
               "dynamic_keep_share": cfg.model.dynamic_keep_share,
               "chat_template": cfg.model.chat_template, "system": cfg.data.system_prompt,
               "adapter": str(adapter), "compare_base": True,
               "questions": questions, "num": 1,
               "max_new_tokens": max(64, cfg.grpo.max_completion_length),
               "temperature": cfg.grpo.temperature, "stream": True,
               "threads": model_threads(training=training, streamed=True),
               "cores": model_threads(training=training)}
        return req, step, run_dir.name

    def on_preload(user, ref, choice):
        """Load the chosen checkpoint's model while the user types: the first answer then
        waits for no load. Only when no model job runs, no run trains and a slot is free:
        otherwise the question loads it, as it always could."""
        yield ""  # whatever the line said was about the run or checkpoint chosen before
        if not ref or studio.manager.running():
            return
        try:
            req, step, run = chat_request(user, ref, choice, [])
        except (OSError, ValueError, ConfigError, AccessError):
            return  # the run or checkpoint is gone: the question will say so
        try:
            for kind, value in studio.jobs.preload(req):
                if kind == "progress":
                    yield f"⏳ {value}… " + t("chat.preload.why")
                elif kind == "result":
                    yield ("✅ " + t("chat.ready.final", run=run) if step is None
                           else "✅ " + t("chat.ready.step", step=step, run=run))
        except JobError:
            yield ""  # the question will load it and say what went wrong

    def on_ask(user, ref, choice, question, hist_t, hist_b):
        hist_t, hist_b = list(hist_t or []), list(hist_b or [])
        if not ref or not (question or "").strip():
            yield t("chat.need_run_and_question"), gr.skip(), gr.skip()
            return
        req, step, run = chat_request(user, ref, choice, [question.strip()[:4000]])
        if step is None:
            answered = t("chat.answered.final", run=run)
        else:
            answered = t("chat.answered.step", step=step, run=run)
        user_turn = {"role": "user", "content": question}
        try:
            for kind, value in studio.jobs.run(req):
                if kind == "progress":
                    yield f"⏳ {value}…", gr.skip(), gr.skip()
                elif kind == "partial":  # the answers so far, as they are written
                    yield (f"⏳ {t('chat.progress.generating')}…",
                           hist_t + [user_turn, {"role": "assistant",
                                                 "content": value["adapter"][0][0]}],
                           hist_b + [user_turn, {"role": "assistant",
                                                 "content": value["base"][0][0]}])
                else:
                    if value.get("engine") == "vllm":
                        answered = t("chat.answered.vllm", answered=answered)
                    elif value.get("engine") == "llama.cpp":
                        answered = t("chat.answered.llama_cpp", answered=answered)
                    hist_t += [user_turn, {"role": "assistant", "content": value["adapter"][0][0]}]
                    hist_b += [user_turn, {"role": "assistant", "content": value["base"][0][0]}]
                    yield answered, hist_t, hist_b
        except JobError as exc:
            yield f"❌ {exc}", gr.skip(), gr.skip()

    # the model loads when a run (once its checkpoints are listed) or a checkpoint is chosen,
    # and when the tab opens
    for trigger in (checkpoints_shown.then, ui["checkpoint"].input, ui["tab"].select):
        trigger(studio.handler(on_preload), [ui["run"], ui["checkpoint"]], ui["chat_status"],
                concurrency_limit=4, show_progress="hidden")
    ui["ask"].click(studio.handler(on_ask),
                    [ui["run"], ui["checkpoint"], ui["question"], ui["trained"], ui["base"]],
                    [ui["chat_status"], ui["trained"], ui["base"]], concurrency_limit=4,
                    show_progress="hidden")  # the status line says what it is doing

    def owned(user, ref, refusal: str = "export.error.not_owner") -> Path:
        """A run whose files this user may take: their own, any for a teacher (the published
        example only to look at and chat with)."""
        run_dir = user.run_dir(ref)
        if not user.owns(run_dir) and not (user.sees_all and policy.shared):
            raise AccessError(t(refusal))
        return run_dir

    working: set[str] = set()  # users with an export or a scoring under way: one each
    working_lock = threading.Lock()

    def start_work(user) -> None:
        """Claim this user's one export or scoring at a time; in a shared mode, within quota."""
        if policy.shared:
            user.check_quota()
        with working_lock:
            if user.name in working:
                raise AccessError(t("export.busy"))
            working.add(user.name)

    def end_work(user) -> None:
        with working_lock:
            working.discard(user.name)

    def on_zip(user, ref, choice):
        if not ref:
            return gr.skip(), t("export.need_run")
        try:
            path = zip_adapter(owned(user, ref), choice)
        except FileNotFoundError as exc:
            return gr.skip(), f"❌ {exc}"
        return [str(path)], t("export.zip.done", file=path.name)

    ui["zip"].click(studio.handler(on_zip), [ui["run"], ui["checkpoint"]],
                    [ui["files"], ui["status"]])

    def on_yaml(user, ref):
        if not ref:
            return gr.skip(), t("export.need_run")
        run_dir = owned(user, ref)
        cfg = RunConfig.load(run_dir / "config.yaml")
        cfg.data.source = user.display_source(cfg.data.source)
        out = scratch_dir("aha-config-") / f"{run_dir.name}.yaml"
        cfg.save(out)
        return [str(out)], t("export.yaml.done")

    ui["yaml"].click(studio.handler(on_yaml), ui["run"], [ui["files"], ui["status"]])

    eval_outputs = [ui["eval_status"], ui["eval_chart"], ui["eval_table"]]

    def shown_evaluation(result: dict, which: str):
        return (summary(result, which), gr.update(value=evaluation_figure(result), visible=True),
                gr.update(value=changed_table(result), visible=True))

    def which_words(step: int | None) -> str:
        return t("export.which.final") if step is None else t("export.which.step", step=step)

    def on_pick_for_eval(user, ref, choice):
        """The saved result of the chosen run and adapter, if it was scored before."""
        hidden = ("", gr.update(visible=False), gr.update(visible=False))
        if not ref:
            return hidden
        try:
            run_dir = user.run_dir(ref)
            _, step = chosen_adapter(run_dir, choice)
        except AccessError:
            return hidden
        saved = saved_evaluation(run_dir, "final" if step is None else f"step-{step}",
                                 split="heldout")
        return shown_evaluation(saved, which_words(step)) if saved else hidden

    ui["checkpoint"].change(studio.handler(on_pick_for_eval), [ui["run"], ui["checkpoint"]],
                            eval_outputs)

    def on_eval(user, ref, choice):
        if not ref:
            yield t("export.need_run"), gr.skip(), gr.skip()
            return
        try:
            run_dir = owned(user, ref, "eval.error.not_owner")
            _, step = chosen_adapter(run_dir, choice)
            cfg = RunConfig.load(run_dir / "config.yaml")
        except (AccessError, ConfigError) as exc:
            yield f"❌ {say(exc)}", gr.skip(), gr.skip()
            return
        if studio.manager.is_alive(run_dir):
            yield "❌ " + t("eval.error.training"), gr.skip(), gr.skip()
            return
        if not cfg.data.eval_source and not cfg.data.eval_share:
            yield "❌ " + t("eval.error.no_heldout"), gr.skip(), gr.skip()
            return
        req = {"job": "evaluate", "run_dir": str(run_dir),
               "checkpoint": None if step is None else f"step-{step}",
               "threads": model_threads(training=bool(studio.manager.running()))}
        try:
            start_work(user)
        except AccessError as exc:
            yield f"❌ {exc}", gr.skip(), gr.skip()
            return
        try:
            for kind, value in studio.jobs.run(req, timeout=3600):
                if kind == "progress":
                    yield f"⏳ {value}…", gr.skip(), gr.skip()
                else:
                    yield shown_evaluation(value, which_words(step))
        except JobError as exc:
            yield f"❌ {exc}", gr.skip(), gr.skip()
        finally:
            end_work(user)

    # the model jobs' pool bounds how many run at once, for everyone together
    ui["eval"].click(studio.handler(on_eval), [ui["run"], ui["checkpoint"]], eval_outputs,
                     concurrency_limit=4)

    def exporter(fmt: str):
        """The merged model (as a zip) or a GGUF file with its Modelfile, made in a model
        process from the checkpoint chosen above, each step shown as it goes."""
        def on_export(user, ref, choice, quant):
            if not ref:
                yield gr.skip(), t("export.need_run")
                return
            try:
                run_dir = owned(user, ref)
                _, step = chosen_adapter(run_dir, choice)
                start_work(user)
            except AccessError as exc:
                yield gr.skip(), f"❌ {exc}"
                return
            try:
                yield from export_steps(run_dir, step, quant)
            finally:
                end_work(user)

        def export_steps(run_dir: Path, step: int | None, quant: str):
            quant = quant if quant in QUANTS else QUANTS[0]
            out = scratch_dir(f"aha-{fmt}-") / export_name(run_dir, step, fmt, quant)
            req = {"job": "export", "run_dir": str(run_dir), "format": fmt, "quant": quant,
                   "checkpoint": None if step is None else f"step-{step}", "out": str(out),
                   "threads": model_threads(training=bool(studio.manager.running()))}
            which = which_words(step)
            result = None
            try:
                for kind_, value in studio.jobs.run(req, timeout=3600):
                    if kind_ == "progress":
                        yield gr.skip(), f"⏳ {value}…"
                    else:
                        result = value
            except JobError as exc:
                yield gr.skip(), f"❌ {exc}"
                return
            if fmt == "merged":
                yield gr.skip(), f"⏳ {t('export.step.zipping')}…"
                path = Path(shutil.make_archive(str(out), "zip", root_dir=out))
                shutil.rmtree(out, ignore_errors=True)
                yield [str(path)], "✅ " + t("export.merge.done", file=path.name, which=which,
                                            size=size_text(path.stat().st_size))
                return
            gguf = Path(result["files"][0])
            check = result.get("check") or {}
            yield result["files"], "✅ " + t(
                "export.gguf.done", file=gguf.name, which=which,
                size=size_text(gguf.stat().st_size), question=check.get("question", ""),
                answer=(check.get("answer") or "…")[:200])
        return on_export

    for fmt in ("merged", "gguf"):
        ui[fmt if fmt == "gguf" else "merge"].click(
            studio.handler(exporter(fmt)), [ui["run"], ui["checkpoint"], ui["quant"]],
            [ui["files"], ui["status"]], concurrency_limit=4)

    def push(ref, choice, repo, token, request, profile, oauth):
        user = policy.user(request, profile)
        if not ref:
            return "❌ " + t("export.push.need_run")
        if policy.mode == "space":  # the signed-in user's own token, never one of the server's
            if oauth is None:
                return "❌ " + t("export.push.need_sign_in")
            token = oauth.token
        try:
            url = push_to_hub(adapter_files(owned(user, ref), choice), repo, token)
        except (ValueError, FileNotFoundError) as exc:
            return f"❌ {exc}"
        return "✅ " + t("export.push.done", url=url)

    safe_push = friendly(push)

    def on_push(ref, choice, repo, token, request: gr.Request, profile: gr.OAuthProfile | None,
                oauth: gr.OAuthToken | None):
        # not a Studio.handler (it also needs the OAuth token): the page's language set here,
        # around `friendly` so that a failure's one line is in that language too
        with speaking(lang_of(request)):
            return safe_push(ref, choice, repo, token, request, profile, oauth)

    ui["push"].click(on_push, [ui["run"], ui["checkpoint"], ui["repo"], ui["token"]],
                     ui["push_status"])
