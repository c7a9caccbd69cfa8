"""Step 2, Data: upload a table or name a Hub dataset, map its columns, see what is wrong."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import gradio as gr

from core.data import DataError, check_data, load_table

from .access import MB, AccessError
from .form import make_widget
from .i18n import L, t

SAMPLE_SOURCE = "builtin:arithmetic?n=200&max_operand=9"
FILE_TYPES = [".csv", ".tsv", ".json", ".jsonl", ".parquet"]
PREVIEW_ROWS = 20


def keep_upload(temp_path: str, uploads_dir: Path) -> str:
    """Copy an upload out of Gradio's temporary cache, so the run can read it later."""
    src = Path(temp_path)
    digest = hashlib.sha256()
    with open(src, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    uploads_dir.mkdir(parents=True, exist_ok=True)
    prefix = digest.hexdigest()[:12]
    same = sorted(uploads_dir.glob(f"{prefix}-*"))
    if same:  # the same bytes uploaded before, under any name: keep one copy
        return str(same[0])
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in src.name)[-80:]
    target = uploads_dir / f"{prefix}-{name}"
    shutil.copyfile(src, target)
    return str(target)


def preview_rows(source: str, limit: int = PREVIEW_ROWS) -> tuple[list[str], list[list]]:
    """Column names and the first rows as text, for the preview table."""
    ds = load_table(source)
    rows = ds.select(range(min(limit, ds.num_rows))).to_list()
    columns = list(ds.column_names)
    return columns, [[_cell(r.get(c)) for c in columns] for r in rows]


def _cell(value) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= 300 else text[:300] + "…"


def report_markdown(report) -> str:
    """The core's validation messages (with row numbers) as a short checklist."""
    lines = []
    if report.num_rows:
        lines.append(t("data.report.summary", rows=report.num_rows,
                       columns=", ".join(map(str, report.columns))))
    for e in report.errors:
        lines.append(f"- ❌ {e}")
    for w in report.warnings:
        lines.append(f"- ⚠️ {w}")
    missing = report.rows_without_answer
    if missing and report.mapping and report.mapping.answer and \
            not any(report.mapping.answer in w for w in report.warnings):
        shown = ", ".join(map(str, missing[:5]))
        if len(missing) > 5:
            shown = t("data.report.and_more", rows=shown, more=len(missing) - 5)
        lines.append("- ℹ️ " + t("data.report.no_answer_row" if len(missing) == 1
                                 else "data.report.no_answer_rows", rows=shown))
    if report.ok:
        lines.append("- ✅ " + t("data.report.ready"))
    return "\n".join(lines)


CHECK_SECONDS = 20  # a shared studio checks data in a child process it stops after this


def inspect_source(source: str, question=None, answer=None, system=None, needing=(),
                   time_limit: float | None = None):
    """(columns, rows, mapping dict, markdown, sample rows for reward proposals).

    With `time_limit` the first check runs in a child process stopped after that many seconds,
    so that no file can hold up the server."""
    source = (source or "").strip()
    if not source:
        return [], [], {}, t("data.source.empty"), []
    report = check_data(source, rewards_needing_answer=list(needing), time_limit=time_limit)
    wanted = {"question": question or None, "answer": answer or None, "system": system or None}
    if report.columns and any(wanted.values()):
        keep = {k: (v if v in report.columns else None) for k, v in wanted.items()}
        report = check_data(source, rewards_needing_answer=list(needing), **keep)
    if report.errors and not report.columns:
        return [], [], {}, report_markdown(report), []
    columns, rows = preview_rows(source)
    m = report.mapping
    mapping = {"question": m.question if m else None, "answer": m.answer if m else None,
               "system": m.system if m else None}
    sample = []
    if m:
        qi = columns.index(m.question) if m.question in columns else None
        ai = columns.index(m.answer) if m.answer in columns else None
        sample = [{"question": r[qi] if qi is not None else "",
                   "answer": r[ai] if ai is not None and r[ai] != "" else None} for r in rows]
    return columns, rows, mapping, report_markdown(report), sample


def build(form: dict) -> dict:
    gr.Markdown(L("data.intro"))
    with gr.Row():
        upload = gr.File(label=L("data.upload.label"), file_types=FILE_TYPES,
                         elem_id="data-upload", scale=2)
        with gr.Column(scale=2):
            hub = gr.Textbox(label=L("data.hub.label"), elem_id="data-hub",
                             placeholder=L("data.hub.placeholder"))
            use_hub = gr.Button(L("data.hub.use"), size="sm")
            sample = gr.Button(L("data.sample.button"), elem_id="data-sample",
                               variant="secondary")
    form["data.source"] = make_widget("data.source", "", interactive=False,
                                      label=L("data.source.label"))
    with gr.Row():
        form["data.question_column"] = gr.Dropdown([], label=L("data.column.question"),
                                                   elem_id="data-question", allow_custom_value=True)
        form["data.answer_column"] = gr.Dropdown([], label=L("data.column.answer"),
                                                 elem_id="data-answer", allow_custom_value=True)
        form["data.system_column"] = gr.Dropdown([], label=L("data.column.system"),
                                                 elem_id="data-system", allow_custom_value=True)
    messages = gr.Markdown(elem_id="data-messages")
    table = gr.Dataframe(label=L("data.preview.label"), interactive=False,
                         elem_id="data-preview", max_height=320, wrap=True)
    form["data.system_prompt"] = make_widget("data.system_prompt", "")
    with gr.Accordion(L("data.more_settings"), open=False):
        form["data.max_rows"] = make_widget("data.max_rows", None)
        form["data.split"] = make_widget("data.split", "train")
        form["data.eval_share"] = make_widget("data.eval_share", 0.1)
        form["data.eval_source"] = make_widget("data.eval_source", "")
        form["data.eval_split"] = make_widget("data.eval_split", "test")
    return {"upload": upload, "hub": hub, "use_hub": use_hub, "sample": sample,
            "messages": messages, "table": table}


def needing_answer(rewards: list[dict]) -> list[str]:
    from reward_templates import get_template
    out = []
    for r in rewards or []:
        try:
            if get_template(r["template"]).needs_answer:
                out.append(r["template"])
        except Exception:
            continue
    return out


def wire(ui: dict, form: dict, studio, sample_state: gr.State, rewards: gr.State) -> None:
    source = form["data.source"]
    cols = [form["data.question_column"], form["data.answer_column"], form["data.system_column"]]
    policy = studio.policy

    def on_upload(user, path):
        if not path:
            return gr.skip(), gr.skip()
        size = Path(path).stat().st_size
        limit = policy.limits.upload_mb if policy.shared else None
        if limit and size > limit * MB:
            raise AccessError(t("data.upload.too_big", size=f"{size / MB:.0f}", limit=limit))
        user.check_quota(adding=size)
        # Gradio's own copy is shared by everyone who uploads the same bytes; its cache is
        # cleared an hour later (delete_cache), this copy is the one that stays.
        kept = keep_upload(path, user.uploads_dir)
        return user.upload_ref(kept), t("data.upload.done", name=Path(kept).name.split("-", 1)[-1])

    ui["upload"].upload(studio.handler(on_upload), ui["upload"], [source, ui["messages"]])

    def on_hub(user, text):
        text = (text or "").strip()
        if not text:
            return gr.skip()
        user.data_source(text)  # a Hub id (or, locally, a path), never a server path elsewhere
        return text

    ui["use_hub"].click(studio.handler(on_hub), ui["hub"], source)
    ui["sample"].click(lambda: SAMPLE_SOURCE, None, source)

    def refresh(user, src, q, a, s, rs):
        try:
            real = user.data_source(src) if (src or "").strip() else ""
            columns, rows, mapping, text, sample = inspect_source(
                real, q, a, s, needing_answer(rs),
                time_limit=CHECK_SECONDS if policy.shared and not real.startswith("builtin:")
                else None)
        except (DataError, AccessError) as exc:
            return [gr.update(choices=[], value=None)] * 3 + [f"❌ {exc}", None, []]
        choices = [""] + columns
        updates = [gr.update(choices=choices, value=mapping.get(k) or "")
                   for k in ("question", "answer", "system")]
        preview = {"headers": columns, "data": rows} if columns else None
        return updates + [text, preview, sample]

    outputs = cols + [ui["messages"], ui["table"], sample_state]
    handler = studio.handler(refresh)  # a loaded YAML brings its own mapping; keep what fits
    source.change(handler, [source] + cols + [rewards], outputs)
    for c in cols:
        c.input(handler, [source] + cols + [rewards], outputs)
