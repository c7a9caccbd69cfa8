"""Step 5, Try and export: ask the trained and the base model side by side; take the result home."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import gradio as gr

from core.config import ConfigError, RunConfig

from .access import AccessError
from .errors import friendly
from .form import cli_command
from .jobs import JobError, scratch_dir

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md", "reward.svg",
                 "aha_config.yaml")


def adapter_dir(run_dir: str | Path) -> Path | None:
    """The final adapter, else the newest checkpoint's (a stopped run has only those)."""
    run_dir = Path(run_dir)
    final = run_dir / "adapter"
    if (final / "adapter_model.safetensors").exists():
        return final
    ckpts = [p for p in (run_dir / "checkpoints").glob("step-*")
             if (p / "adapter_model.safetensors").exists() and p.name[5:].isdigit()]
    return max(ckpts, key=lambda p: int(p.name[5:]), default=None)


def adapter_files(run_dir: str | Path) -> Path:
    """A fresh folder with just the adapter's files (no optimizer state), named after the run."""
    src = adapter_dir(run_dir)
    if src is None:
        raise FileNotFoundError("This run has no adapter yet: train at least until the first "
                                "checkpoint.")
    folder = scratch_dir("aha-export-") / f"{Path(run_dir).name}-adapter"
    folder.mkdir()
    for name in ADAPTER_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, folder / name)
    return folder


def zip_adapter(run_dir: str | Path) -> Path:
    folder = adapter_files(run_dir)
    return Path(shutil.make_archive(str(folder), "zip", root_dir=folder))


def push_to_hub(folder: Path, repo_id: str, token: str) -> str:
    from huggingface_hub import HfApi

    repo_id, token = (repo_id or "").strip(), (token or "").strip()
    if repo_id.count("/") != 1:
        raise ValueError("Write the repository as your-name/model-name.")
    if not token:
        raise ValueError("Paste a Hugging Face access token with write permission.")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    except Exception as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"Could not push to the Hub: {text[:200]}") from None
    return f"https://huggingface.co/{repo_id}"


def checkpoint_choices(run_dir: Path) -> list[tuple[str, str]]:
    """(label, value) for the adapters of a run: the final one, then each checkpoint, newest
    first."""
    out = []
    if (run_dir / "adapter" / "adapter_model.safetensors").exists():
        out.append(("final adapter", "final"))
    steps = sorted((int(p.name[5:]) for p in (run_dir / "checkpoints").glob("step-*")
                    if p.name[5:].isdigit() and (p / "adapter_model.safetensors").exists()),
                   reverse=True)
    return out + [(f"step {n}", f"step-{n}") for n in steps]


def chosen_adapter(run_dir: Path, choice: str | None) -> tuple[Path, str]:
    """(adapter folder, words for it) for a choice offered by checkpoint_choices."""
    if choice and choice != "final":
        if not re.fullmatch(r"step-\d{1,9}", str(choice)):
            raise AccessError("No such checkpoint.")
        path = run_dir / "checkpoints" / choice
        if (path / "adapter_model.safetensors").exists():
            return path, f"the checkpoint at step {choice[5:]}"
        raise AccessError("That checkpoint is gone; pick another.")
    found = adapter_dir(run_dir)
    if found is None:
        raise AccessError("This run has no adapter yet.")
    if found.name == "adapter":
        return found, "the final adapter"
    return found, f"the checkpoint at step {found.name[5:]}"


def run_choices(studio, user) -> list[tuple[str, str]]:
    """(label, run ref) of the runs with an adapter this user may see."""
    return [(f"{user.run_ref(st.run_dir)} · {st.state}", user.run_ref(st.run_dir))
            for st in studio.runs_of(user) if adapter_dir(st.run_dir) is not None]


def build() -> dict:
    gr.Markdown("### 5 · Try and export")
    with gr.Row():
        run = gr.Dropdown([], label="Run", elem_id="export-run", scale=3)
        refresh = gr.Button("Refresh", size="sm", scale=1, elem_id="export-refresh")
    checkpoint = gr.Dropdown([], label="Which adapter answers", elem_id="export-checkpoint",
                             info="The final adapter, or the one saved at an earlier step.")
    question = gr.Textbox(label="Ask both models the same question", elem_id="chat-question",
                          placeholder="What is 3 + 4?")
    ask = gr.Button("Ask", elem_id="chat-ask")
    chat_status = gr.Markdown(elem_id="chat-status")
    with gr.Row():
        trained = gr.Chatbot(label="Trained (with your adapter)", elem_id="chat-trained",
                             height=260)
        base = gr.Chatbot(label="Base model", elem_id="chat-base", height=260)
    gr.Markdown("**Export**")
    with gr.Row():
        zip_btn = gr.Button("Download the LoRA adapter (.zip)", elem_id="export-zip")
        merge_btn = gr.Button("Merge into a 16-bit model", elem_id="export-merge")
        yaml_btn = gr.Button("Download the run's YAML", elem_id="export-yaml")
    files = gr.File(label="Files", file_count="multiple", interactive=False,
                    elem_id="export-files")
    export_status = gr.Markdown(elem_id="export-status")
    command = gr.Code(label="The same run from the command line", language="shell",
                      elem_id="export-command")
    with gr.Accordion("Push to the Hugging Face Hub", open=False):
        repo = gr.Textbox(label="Repository", placeholder="your-name/my-grpo-adapter")
        token = gr.Textbox(label="Access token (write)", type="password")
        push = gr.Button("Push the adapter", elem_id="export-push")
        push_status = gr.Markdown()
    return {"run": run, "refresh": refresh, "checkpoint": checkpoint, "question": question,
            "ask": ask,
            "chat_status": chat_status, "trained": trained, "base": base, "zip": zip_btn,
            "merge": merge_btn, "yaml": yaml_btn, "files": files, "status": export_status,
            "command": command, "repo": repo, "token": token, "push": push,
            "push_status": push_status}


def wire(ui: dict, studio, watch: gr.State) -> None:
    policy = studio.policy

    def choices(user, wt=None):
        opts = run_choices(studio, user)
        current = (wt or {}).get("run_dir")
        current = user.run_ref(current) if current else None
        value = current if current in {v for _, v in opts} else (opts[0][1] if opts else None)
        return gr.update(choices=opts, value=value)

    ui["refresh"].click(studio.handler(choices), watch, ui["run"], queue=False)

    def on_watch(user, wt):
        return choices(user, wt) if wt.get("state") in ("stopped", "finished") else gr.skip()

    watch.change(studio.handler(on_watch), watch, ui["run"], queue=False)

    def on_run(user, ref):
        if not ref:
            return ""
        run_dir = user.run_dir(ref)
        if policy.shared:
            return cli_command(f"{run_dir.name}/config.yaml", run_dir.name)
        return cli_command(str(run_dir / "config.yaml"), str(run_dir))

    ui["run"].change(studio.handler(on_run), ui["run"], ui["command"])

    def on_run_checkpoints(user, ref):
        if not ref:
            return gr.update(choices=[], value=None)
        options = checkpoint_choices(user.run_dir(ref))
        return gr.update(choices=options, value=options[0][1] if options else None)

    ui["run"].change(studio.handler(on_run_checkpoints), ui["run"], ui["checkpoint"])

    def on_ask(user, ref, choice, question, hist_t, hist_b):
        hist_t, hist_b = list(hist_t or []), list(hist_b or [])
        if not ref or not (question or "").strip():
            yield "Choose a run and type a question.", gr.skip(), gr.skip()
            return
        run_dir = user.run_dir(ref)
        adapter, which = chosen_adapter(run_dir, choice)
        cfg = RunConfig.load(run_dir / "config.yaml")
        req = {"job": "generate", "source": cfg.model.source, "precision": cfg.model.precision,
               "chat_template": cfg.model.chat_template, "system": cfg.data.system_prompt,
               "adapter": str(adapter), "compare_base": True,
               "questions": [question.strip()[:4000]], "num": 1,
               "max_new_tokens": max(64, cfg.grpo.max_completion_length),
               "temperature": cfg.grpo.temperature}
        try:
            for kind, value in studio.jobs.run(req):
                if kind == "progress":
                    yield f"⏳ {value}…", gr.skip(), gr.skip()
                else:
                    user_turn = {"role": "user", "content": question}
                    hist_t += [user_turn, {"role": "assistant", "content": value["adapter"][0][0]}]
                    hist_b += [user_turn, {"role": "assistant", "content": value["base"][0][0]}]
                    yield f"Answered by {which} of **{run_dir.name}**.", hist_t, hist_b
        except JobError as exc:
            yield f"❌ {exc}", gr.skip(), gr.skip()

    ui["ask"].click(studio.handler(on_ask),
                    [ui["run"], ui["checkpoint"], ui["question"], ui["trained"], ui["base"]],
                    [ui["chat_status"], ui["trained"], ui["base"]], concurrency_limit=4)

    def owned(user, ref) -> Path:
        """A run whose files this user may take: their own, any for a teacher (the published
        example only to look at and chat with)."""
        run_dir = user.run_dir(ref)
        if not user.owns(run_dir) and not (user.sees_all and policy.shared):
            raise AccessError("Only the run's owner or a teacher can export it.")
        return run_dir

    def on_zip(user, ref):
        if not ref:
            return gr.skip(), "Choose a run first."
        try:
            path = zip_adapter(owned(user, ref))
        except FileNotFoundError as exc:
            return gr.skip(), f"❌ {exc}"
        return [str(path)], f"Adapter packed: {path.name}"

    ui["zip"].click(studio.handler(on_zip), ui["run"], [ui["files"], ui["status"]])

    def on_yaml(user, ref):
        if not ref:
            return gr.skip(), "Choose a run first."
        run_dir = owned(user, ref)
        cfg = RunConfig.load(run_dir / "config.yaml")
        cfg.data.source = user.display_source(cfg.data.source)
        out = scratch_dir("aha-config-") / f"{run_dir.name}.yaml"
        cfg.save(out)
        return [str(out)], "The run's settings, as the worker used them."

    ui["yaml"].click(studio.handler(on_yaml), ui["run"], [ui["files"], ui["status"]])

    def on_merge(user, ref):
        if not ref:
            yield gr.skip(), "Choose a run first."
            return
        try:
            run_dir = owned(user, ref)
            user.check_quota()
            cfg = RunConfig.load(run_dir / "config.yaml")
        except (ConfigError, AccessError) as exc:
            yield gr.skip(), f"❌ {exc}"
            return
        out = run_dir / "merged-16bit"
        req = {"job": "merge", "source": cfg.model.source, "adapter": str(adapter_dir(run_dir)),
               "out": str(out)}
        try:
            for kind, value in studio.jobs.run(req):
                if kind == "progress":
                    yield gr.skip(), f"⏳ {value}…"
                else:
                    yield gr.skip(), f"✅ Merged model saved in the run's folder " \
                        f"(`{run_dir.name}/merged-16bit`)."
        except JobError as exc:
            yield gr.skip(), f"❌ {exc}"

    ui["merge"].click(studio.handler(on_merge), ui["run"], [ui["files"], ui["status"]],
                      concurrency_limit=1)

    @friendly
    def on_push(ref, repo, token, request: gr.Request, profile: gr.OAuthProfile | None,
                oauth: gr.OAuthToken | None):
        user = policy.user(request, profile)
        if not ref:
            return "❌ Choose a run with an adapter first."
        if policy.mode == "space":  # the signed-in user's own token, never one of the server's
            if oauth is None:
                return "❌ Sign in with Hugging Face first: the push uses your own account."
            token = oauth.token
        try:
            return f"✅ Pushed: {push_to_hub(adapter_files(owned(user, ref)), repo, token)}"
        except (ValueError, FileNotFoundError) as exc:
            return f"❌ {exc}"

    ui["push"].click(on_push, [ui["run"], ui["repo"], ui["token"]], ui["push_status"])
