"""Step 2, Data: upload a table or name a Hub dataset, map its columns, see what is wrong."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import unicodedata
from collections import OrderedDict
from pathlib import Path

import gradio as gr

from core.data import (HUB_PREFIX, MESSAGES, DataError, check_data, load_table, render,
                       size_words)

from .access import MB, UPLOAD_PREFIX, AccessError
from .form import make_widget
from .i18n import L, core_template, t

SAMPLE_SOURCE = "builtin:arithmetic?n=200&max_operand=9"
FILE_TYPES = [".csv", ".tsv", ".json", ".jsonl", ".parquet"]
PREVIEW_ROWS = 20


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stored_name(name: str) -> str:
    """The user's file name as the uploads folder keeps it (an upload ref allows ASCII letters,
    digits and `._-`, starting with a letter or digit): 'Übung 1.csv' -> 'Ubung_1.csv'."""
    text = unicodedata.normalize("NFKD", Path(name).name.replace("ß", "ss"))
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = "".join(c if (c.isascii() and c.isalnum()) or c in "._-" else "_" for c in text)
    stem, dot, ext = text.rpartition(".") if "." in text else (text, "", "")
    stem = re.sub(r"^[^A-Za-z0-9]+", "", stem)[:72] or "data"  # ".csv" -> "data.csv"
    return stem + dot + ext[:12]


def shown_name(name: str) -> str:
    """The name the user gave a kept upload (copies kept under a digest prefix shown without
    it): '1c605133a415-summen.csv' -> 'summen.csv'."""
    return re.sub(r"^[0-9a-f]{12}-(?=.)", "", Path(str(name)).name)


def _keep(temp_path: str, uploads_dir: Path) -> tuple[str, bool]:
    """(kept path, whether it is a new copy): the upload under the user's own file name, or a
    numbered one ('summen-2.csv') where another file has that name; the same bytes under the
    same name are kept once.

    The bytes are copied under a hidden name first and the file appears under its own name
    whole (a hard link, which fails where the name is taken): two uploads of one name at once
    each see the other's file complete or not at all, never half written. On a file system
    without hard links (FAT, some network and cloud drives) the name is claimed first and the
    bytes copied after, as before."""
    src = Path(temp_path)
    digest, size = _digest(src), src.stat().st_size
    uploads_dir.mkdir(parents=True, exist_ok=True)
    name = stored_name(src.name)
    stem, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
    for stale in uploads_dir.glob(".incoming-*"):  # left by a server stopped mid-copy
        try:
            if time.time() - stale.stat().st_mtime > 3600:
                stale.unlink()
        except OSError:
            pass
    def same(target: Path) -> bool:  # these very bytes, already kept under this name
        return target.is_file() and target.stat().st_size == size and _digest(target) == digest

    incoming = None
    try:
        for number in range(1, 10_000):
            target = uploads_dir / (name if number == 1 else f"{stem}-{number}{dot}{ext}")
            if target.is_file():
                if same(target):
                    return str(target), False
                continue
            if incoming is None:
                with open(src, "rb") as f, tempfile.NamedTemporaryFile(
                        dir=uploads_dir, prefix=".incoming-", delete=False) as out:
                    incoming = Path(out.name)
                    shutil.copyfileobj(f, out, 1 << 20)
            try:
                os.link(incoming, target)  # claims the name, with every byte in place
            except FileExistsError:  # taken a moment ago: look at it as above
                if same(target):
                    return str(target), False
                continue
            except OSError:  # a file system without hard links: claim the name, then copy
                try:
                    out = open(target, "xb")
                except FileExistsError:
                    continue
                try:
                    with out, open(incoming, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 20)
                except BaseException:
                    target.unlink(missing_ok=True)
                    raise
            return str(target), True
    finally:  # a disk full halfway leaves no broken copy behind
        if incoming is not None:
            incoming.unlink(missing_ok=True)
    raise AccessError(t("access.no_upload"))


def keep_upload(temp_path: str, uploads_dir: Path) -> str:
    """Copy an upload out of Gradio's temporary cache, so the run can read it later."""
    return _keep(temp_path, uploads_dir)[0]


template = core_template("data.msg.", MESSAGES)  # core's data messages in the page's language


def size_text(n: float) -> str:
    """A number of bytes in the page's language: '1.5 MB', '1,5 MB'."""
    return size_words(n, template)


def message_text(message: dict, source: str = "") -> str:
    """One of core's data messages ({"id", "params", "text"}) in the page's language, naming an
    upload by the user's own file name."""
    text = message.get("text") or ""
    if message.get("id") in MESSAGES:
        try:
            text = render(message["id"], message.get("params") or {}, template)
        except (KeyError, IndexError, ValueError):  # a catalog text that doesn't fit: core's
            pass
    path = Path(str(source or ""))
    if path.name and path.name != shown_name(path.name):
        text = text.replace(str(path), shown_name(path.name)).replace(path.name, shown_name(path.name))
    return text


def error_text(exc: Exception, source: str = "") -> str:
    if isinstance(exc, DataError):
        return message_text(exc.to_message(), source)
    return str(exc)


def preview_rows(source: str, limit: int = PREVIEW_ROWS) -> tuple[list[str], list[list]]:
    """Column names and the first rows as text, for the preview table."""
    ds = load_table(source)
    rows = ds.select(range(min(limit, ds.num_rows))).to_list()
    columns = list(ds.column_names)
    return columns, [[_cell(r.get(c)) for c in columns] for r in rows]


def _cell(value) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= 300 else text[:300] + "…"


def report_messages(report) -> list[tuple[str, str]]:
    """(level, text in the page's language) of each of a report's errors and warnings."""
    messages = list(report.messages or [])
    if len(messages) != len(report.errors) + len(report.warnings):  # a report made elsewhere
        messages = [{"level": "error", "text": e} for e in report.errors] + \
                   [{"level": "warning", "text": w} for w in report.warnings]
    ordered = [m for m in messages if m["level"] == "error"] + \
              [m for m in messages if m["level"] != "error"]
    return [(m["level"], message_text(m, report.source)) for m in ordered]


def report_markdown(report) -> str:
    """The core's validation messages (with row numbers) as a short checklist."""
    lines = []
    if report.num_rows:
        lines.append(t("data.report.summary", rows=report.num_rows,
                       columns=", ".join(map(str, report.columns))))
    for level, text in report_messages(report):
        lines.append(f"- {'❌' if level == 'error' else '⚠️'} {text}")
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


class Cleared:
    """Files that passed a shared studio's timed check (a child process stopped after
    CHECK_SECONDS): later checks of the same file read it in the server's process, at once.
    An upload is checked when it arrives and again as it becomes the data in use, with the
    columns chosen; each check was a child process of a few seconds (up to 20), twice per upload.

    A file counts as the same while its size and time of change are (the server wrote it; no
    one else changes it). A Hub dataset is never cleared: its owner can push a new revision at
    any moment. At most KEEP files are remembered, the least recently used forgotten first."""

    KEEP = 256

    def __init__(self):
        self._seen: OrderedDict[tuple, None] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(source: str) -> tuple | None:
        if source.startswith(HUB_PREFIX):
            return None
        try:
            st = Path(source).stat()  # the same file under any name
        except (OSError, ValueError):  # not a file here
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) \
            else None

    def time_limit(self, source: str, seconds: float | None) -> float | None:
        """`seconds` for a source not yet cleared; None (no child process) for one that is."""
        key = self._key(source)
        if seconds is None or key is None:
            return seconds
        with self._lock:
            if key not in self._seen:
                return seconds
            self._seen.move_to_end(key)
            return None

    def note(self, source: str, readable: bool) -> None:
        """A timed check's outcome: `readable` when it found the table's columns."""
        key = self._key(source)
        if not readable or key is None:
            return
        with self._lock:
            self._seen[key] = None
            self._seen.move_to_end(key)
            while len(self._seen) > self.KEEP:
                self._seen.popitem(last=False)


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


def shown_source(source: str) -> str:
    """A data source as the user knows it: an upload by its file name."""
    source = str(source or "").strip()
    if source.startswith(UPLOAD_PREFIX):
        return shown_name(source[len(UPLOAD_PREFIX):])
    return source


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
    # shown while there is data to show (empty, it showed the framework's headers "1 2 3")
    table = gr.Dataframe(label=L("data.preview.label"), interactive=False,
                         elem_id="data-preview", max_height=320, wrap=True, visible=False)
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

    cleared = Cleared()

    def time_limit(real: str):
        shared = policy.shared and not real.startswith("builtin:")
        return cleared.time_limit(real, CHECK_SECONDS if shared else None)

    def refused(report, in_use: str) -> str:
        """Why new data was not taken, and that the data in use stays."""
        lines = [f"- ❌ {text}" for level, text in report_messages(report) if level == "error"]
        if (in_use or "").strip():
            lines.append("- ℹ️ " + t("data.kept", source=shown_source(in_use)))
        return "\n".join(lines)

    def on_upload(user, path, in_use):
        if not path:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        size = Path(path).stat().st_size
        limit = policy.limits.upload_mb if policy.shared else None
        if limit and size > limit * MB:
            raise AccessError(t("data.upload.too_big", size=f"{size / MB:.0f}", limit=limit))
        user.check_quota(adding=size)
        # Gradio's own copy is shared by everyone who uploads the same bytes; its cache is
        # cleared an hour later (delete_cache), this copy is the one that stays.
        kept, new = _keep(path, user.uploads_dir)
        report = check_data(kept, time_limit=time_limit(kept))
        cleared.note(kept, bool(report.columns))
        if report.errors and not report.columns:  # not a table at all: the data in use stays
            if new:
                Path(kept).unlink(missing_ok=True)
            return gr.skip(), gr.update(value=None), gr.skip(), refused(report, in_use)
        return (user.upload_ref(kept), gr.skip(), "",
                t("data.upload.done", name=shown_name(Path(kept).name)))

    ui["upload"].upload(studio.handler(on_upload), [ui["upload"], source],
                        [source, ui["upload"], ui["hub"], ui["messages"]])

    def on_hub(user, text, in_use):
        text = (text or "").strip()
        if not text:
            return gr.skip(), gr.skip(), gr.skip()
        real = user.data_source(text)  # a Hub id (or, locally, a path), never a server path elsewhere
        if text == (in_use or "").strip():
            return gr.skip(), gr.update(value=None), gr.skip()
        report = check_data(real, time_limit=time_limit(real))
        cleared.note(real, bool(report.columns))
        if report.errors and not report.columns:  # nothing to use there: the data in use stays
            return gr.skip(), gr.skip(), refused(report, in_use)
        return text, gr.update(value=None), gr.skip()

    ui["use_hub"].click(studio.handler(on_hub), [ui["hub"], source],
                        [source, ui["upload"], ui["messages"]])
    # the boxes show what is in use: the sample data came from neither
    ui["sample"].click(lambda: (SAMPLE_SOURCE, gr.update(value=None), ""), None,
                       [source, ui["upload"], ui["hub"]])

    def refresh(user, src, q, a, s, rs):
        real = ""
        try:
            real = user.data_source(src) if (src or "").strip() else ""
            columns, rows, mapping, text, sample = inspect_source(
                real, q, a, s, needing_answer(rs), time_limit=time_limit(real))
            cleared.note(real, bool(columns))
        except (DataError, AccessError) as exc:
            hidden = gr.update(value=None, visible=False)
            return [gr.update(choices=[], value=None)] * 3 + [f"❌ {error_text(exc, real)}",
                                                              hidden, []]
        choices = [""] + columns
        updates = [gr.update(choices=choices, value=mapping.get(k) or "")
                   for k in ("question", "answer", "system")]
        preview = {"headers": columns, "data": rows} if columns else None
        return updates + [text, gr.update(value=preview, visible=preview is not None), sample]

    outputs = cols + [ui["messages"], ui["table"], sample_state]
    handler = studio.handler(refresh)  # a loaded YAML brings its own mapping; keep what fits
    source.change(handler, [source] + cols + [rewards], outputs)
    for c in cols:
        c.input(handler, [source] + cols + [rewards], outputs)
