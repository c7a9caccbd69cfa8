"""Data layer: load a table, find its question/answer columns, check it, shape it for training.

Everything a beginner can get wrong with a data file ends up as a :class:`DataError` whose
message is a single plain-English line, so the web UI can show it as-is.  Row numbers in
messages are 1-based data rows (row 1 = the first row under the header), like a spreadsheet.
"""
from __future__ import annotations

import codecs
import csv
import functools
import hashlib
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import unquote

import datasets
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets.exceptions import DatasetNotFoundError

from .messages import MessageError

# Column names by role, English first, then German, French and Spanish (compared without case,
# accents or spaces: "Réponse" matches "reponse", "Begründung" matches "begrundung").
QUESTION_NAMES = ("question", "prompt", "input", "instruction", "problem", "query",
                  "frage", "aufgabe", "eingabe", "fragestellung", "aufgabenstellung", "fragen",
                  "enonce", "consigne", "entree", "probleme",
                  "pregunta", "enunciado", "problema", "entrada", "consulta")
ANSWER_NAMES = ("answer", "output", "response", "solution", "completion", "target",
                "antwort", "losung", "loesung", "ergebnis", "ausgabe",
                "reponse", "resultat", "sortie",
                "respuesta", "solucion", "resultado", "salida",
                "antworten", "musterlosung", "musterloesung",
                # last: a worked solution ("Begründung", "Lösungsweg") holds the answer too (its
                # final number), but a column that holds only the answer wins over it
                "begrundung", "begruendung", "losungsweg", "loesungsweg")
SYSTEM_NAMES = ("system", "system_prompt", "systemprompt", "systemanweisung", "systeme",
                "sistema")

FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
LONG_QUESTION_CHARS = 4000
# Limits on the shape of a table, checked as early as the format allows (CSV/TSV: the header
# line and a row count before `datasets` parses the file; Parquet: its metadata; JSON: the first
# row, then the loaded table), so a hostile or mistaken file is refused in moments.
MAX_COLUMNS = 1000
MAX_ROWS = 1_000_000
_JSON_PEEK_CHARS = 8 * 2**20  # how much of a JSON file is read to count the first row's columns
HUB_PREFIX = "hub:"  # a data source read from the Hub only (the shared modes' sources)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")
_TRAIN_FEATURES = datasets.Features({
    "question": datasets.Value("string"), "answer": datasets.Value("string"),
    "answer_full": datasets.Value("string"), "system": datasets.Value("string"),
    "row": datasets.Value("int64"),
})


# Every message a beginner may see about their data, by a stable id, in English; the studio shows
# the same ids in the page's language (studio/locales: "data.msg.<id>"). A parameter holding a
# list is written out: `rows` as "row 3" / "rows 3, 7 and 12 more", any other list as names
# ("a, b and 3 more"); one holding {"id": ..., "params": {...}} is that message, written in turn.
MESSAGES = {
    # pieces other messages are built from
    "row": "row {rows}",
    "rows": "rows {rows}",
    "more_rows": "{items} and {more} more",
    "more_names": "{items} and {more} more",
    "sep_commas": "commas",
    "sep_semicolons": "semicolons",
    "sep_tabs": "tabs",
    "decimal_point": ".",
    "size_bytes": "{n} bytes",
    "size_KB": "{n} KB",
    "size_MB": "{n} MB",
    "size_GB": "{n} GB",
    # loading
    "no_source": "No data given; choose a file or type a dataset name.",
    "folder": "'{name}' is a folder; choose a data file inside it.",
    "file_not_found": "File not found: {path}",
    "unsupported_type": "Can't read '{name}': unsupported file type '{ext}'. Supported: {formats}.",
    "unsupported_no_ext": "Can't read '{name}': unsupported file type 'no extension'. "
                          "Supported: {formats}.",
    "unsupported_excel": "Can't read '{name}': unsupported file type '{ext}'. Supported: {formats}. "
                         "For Excel, use Save As > 'CSV UTF-8' first.",
    "file_empty": "The file {name} is empty.",
    "file_no_rows": "The file {name} is empty (it has no data rows).",
    "file_header_only": "The file {name} is empty (it has a header but no data rows).",
    "file_too_big": "The file {name} is {size}, over the {limit} limit; use a smaller file.",
    "not_utf8": "The file {name} isn't UTF-8 text; save it as UTF-8 (in Excel: 'CSV UTF-8').",
    "unreadable": "Couldn't read {name}: {reason}",
    "unreadable_os": "Couldn't read {name}: {reason}.",
    "unreadable_os_data": "Couldn't read the data: {reason}.",
    "load_failed": "Couldn't load the data: {reason}",
    "json_invalid": "it isn't valid JSON near line {line} ({reason}).",
    "json_list_objects": "the JSON list must hold one object ({{...}}) per row.",
    "json_line_invalid": "line {line} isn't valid JSON ({reason}).",
    "json_line_not_object": "line {line} isn't a JSON object ({{...}}); each line must describe one row.",
    "csv_quote_header": "The file {name} is broken: the header has a quote (\") that is never closed.",
    "csv_quote_row": "The file {name} is broken: row {row} has a quote (\") that is never closed.",
    "csv_broken_header": "The file {name} is broken at the header ({reason}); a quote inside "
                         "a quoted value must be written twice (\"\").",
    "csv_broken_row": "The file {name} is broken at row {row} ({reason}); a quote inside "
                      "a quoted value must be written twice (\"\").",
    "csv_same_column": "The file {name} has the column '{column}' more than once in its header; "
                       "rename or remove the extra one.",
    "csv_extra_values_one": "The file {name} is broken: {rows} has more values than the {count} "
                            "header columns; put text that contains {sep} in double quotes.",
    "csv_extra_values": "The file {name} is broken: {rows} have more values than the {count} "
                        "header columns; put text that contains {sep} in double quotes.",
    "too_many_columns": "This table has {count} columns; at most {limit} are supported. "
                        "Is it really a table of questions?",
    "too_many_rows": "This table has {count} rows; at most {limit} are supported. "
                     "Use a smaller part of it.",
    "too_many_rows_more": "This table has more than {limit} rows; at most {limit} are supported. "
                          "Use a smaller part of it.",
    "too_many_rows_hub": "This table has {count} rows; at most {limit} are supported. Use a part "
                         "of it, for example the split '{split}[:{part}]'.",
    "hub_offline": "Could not download dataset '{source}': no internet connection or the name is wrong.",
    "hub_not_found": "Dataset '{repo}' was not found on the Hugging Face Hub; check the name "
                     "(private datasets need a login).",
    "hub_needs_config": "Dataset '{repo}' needs a configuration, written as '{repo}:NAME'.",
    "hub_needs_config_options": "Dataset '{repo}' needs a configuration, written as '{repo}:NAME' "
                                "(available: {options}).",
    "hub_no_split": "Dataset '{repo}' has no split '{split}': {reason}",
    "hub_failed": "Could not load dataset '{source}': {reason}",
    "hub_no_rows": "Dataset '{source}' has no rows in split '{split}'.",
    "builtin_unknown": "Unknown built-in dataset '{name}'; available: builtin:arithmetic.",
    "builtin_option": "Unknown option '{option}' for builtin:arithmetic; use n, seed, max_operand "
                      "or operations.",
    "builtin_whole_number": "Option '{option}' of builtin:arithmetic must be a whole number, not '{value}'.",
    "arithmetic_operations": "Operations must be made of + - * (for example '+-'), not '{value}'.",
    "arithmetic_count": "The number of arithmetic problems must be between 1 and 1000000, not {value}.",
    "arithmetic_max_operand": "The largest number in arithmetic problems must be at least 1, not {value}.",
    # columns
    "no_question": "Couldn't tell which column holds the questions (columns found: {columns}); "
                   "rename one to 'question' or choose the question column yourself.",
    "no_question_no_columns": "Couldn't tell which column holds the questions (columns found: "
                              "none); rename one to 'question' or choose the question column yourself.",
    "column_not_found": "Column '{column}' not found; the file has columns: {columns}.",
    # checking
    "question_empty": "Column '{column}' is empty in {rows}; every row needs a question.",
    "no_answer_column": "No answer column found, so rewards that compare with a reference answer "
                        "can't be used.",
    "no_answer_column_rewards": "No answer column found, so rewards that compare with a reference "
                                "answer can't be used: {rewards}.",
    "answer_empty_all": "Column '{column}' is empty in every row.",
    "answer_empty_all_rewards": "Column '{column}' is empty in every row, so these rewards can't "
                                "be used: {rewards}.",
    "answer_empty_rows": "Column '{column}' is empty in {rows}; these rewards need an answer in "
                         "every row: {rewards}.",
    "duplicate": "1 duplicate question (repeating an earlier row) in {rows}; duplicates get "
                 "extra weight in training.",
    "duplicates": "{count} duplicate questions (repeating an earlier row) in {rows}; duplicates "
                  "get extra weight in training.",
    "long_questions": "Very long questions (over {limit} characters) in {rows}; they may be cut "
                      "short during training.",
    "check_failed": "Couldn't check the data: {reason}",
    "check_too_slow": "Checking this data took longer than {seconds} s; it is too big or too "
                      "complex for this studio.",
    "check_crashed": "Checking this data stopped unexpectedly (exit code {code}); it may be too "
                     "big for this computer's memory.",
    # preparing for training
    "max_rows": "The maximum number of rows must be at least 1, not {value}.",
    "answers_needed": "No answer column found, but the chosen rewards need one; choose the answer "
                      "column or different rewards.",
    "rewards_need_answers": "Rewards {rewards} need a reference answer, but {count} rows have "
                            "none (first: row {row}).",
    "answers_needed_rows": "Column '{column}' is empty in {rows}; the chosen rewards need an "
                           "answer in every row.",
}


def render(msg_id: str, params: dict | None = None, text=None) -> str:
    """Message `msg_id` filled with `params`; `text(id)` gives each template (English by
    default; the studio passes its own catalog's)."""
    text = text or MESSAGES.get
    values = {}
    for key, value in (params or {}).items():
        if isinstance(value, dict) and "id" in value:
            value = render(value["id"], value.get("params"), text)
        elif isinstance(value, float):  # written with the language's decimal mark: 1.5 / 1,5
            value = f"{value:g}".replace(".", text("decimal_point"))
        elif isinstance(value, (list, tuple)) and key == "rows":
            shown = ", ".join(str(r) for r in value[:5])
            if len(value) > 5:
                shown = text("more_rows").format(items=shown, more=len(value) - 5)
            value = text("row" if len(value) == 1 else "rows").format(rows=shown)
        elif isinstance(value, (list, tuple)):
            shown = ", ".join(str(v) for v in value[:20])
            if len(value) > 20:
                shown = text("more_names").format(items=shown, more=len(value) - 20)
            value = shown
        values[key] = value
    return text(msg_id).format(**values)


class DataError(MessageError):
    """A problem with the user's data, worded for a beginner and always on one line.

    `DataError("file_empty", name="x.csv")` says message `file_empty` of MESSAGES (its id and
    parameters stay on the error as `msg_id` and `params`, for the studio to say in the page's
    language); any other text is taken as it is."""

    MESSAGES = MESSAGES
    render = staticmethod(render)

    def to_message(self, level: str = "error") -> dict:
        return {"level": level, "id": self.msg_id, "params": self.params, "text": str(self)}


@dataclass
class ColumnMapping:
    """Which column of the table holds what; answer and system are optional."""

    question: str
    answer: str | None = None
    system: str | None = None


@dataclass
class DataReport:
    """What check_data found. Messages are one line each; errors make the data unusable."""

    source: str
    num_rows: int = 0
    columns: list[str] = field(default_factory=list)
    mapping: ColumnMapping | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rows_without_answer: list[int] = field(default_factory=list)
    unusable_rewards: list[str] = field(default_factory=list)
    # each error and warning again as {"level", "id", "params", "text"} (`render` says it in
    # another language); the English texts above stay for the command line and logs
    messages: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, level: str, msg_id: str, **params) -> None:
        """Record message `msg_id` as an "error" or a "warning"."""
        self.note(DataError(msg_id, **params), level)

    def note(self, exc: DataError, level: str = "error") -> None:
        (self.errors if level == "error" else self.warnings).append(str(exc))
        self.messages.append(exc.to_message(level))

    def format(self, limit: int = 10) -> str:
        """A multi-line summary for people (CLI and logs)."""
        m = self.mapping
        lines = [f"Data: {self.source}", f"Rows: {self.num_rows}"]
        if self.columns:
            lines.append("Columns: " + ", ".join(self.columns))
        if m:
            lines.append(f"Question column: {m.question}")
            lines.append(f"Answer column: {m.answer or '(none)'}")
            lines.append(f"System column: {m.system or '(none, the system prompt setting is used)'}")
            if self.rows_without_answer:
                lines.append(f"Rows without an answer: {len(self.rows_without_answer)} "
                             f"({_rows(self.rows_without_answer)})")
        if self.unusable_rewards:
            lines.append("Rewards that can't be used: " + ", ".join(self.unusable_rewards))
        for title, items in (("Errors", self.errors), ("Warnings", self.warnings)):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  - {item}" for item in items[:limit]]
                if len(items) > limit:
                    lines.append(f"  ... and {len(items) - limit} more")
        lines.append("OK: ready for training." if self.ok
                     else "Problems found: fix the errors above, then check again.")
        return "\n".join(lines)


# ---------------------------------------------------------------- small helpers

def _rows(rows: list[int], show: int = 5) -> str:
    """'row 3' / 'rows 3, 7' / 'rows 1, 2, 3, 4, 5 and 12 more'."""
    head = ", ".join(str(r) for r in rows[:show])
    more = f" and {len(rows) - show} more" if len(rows) > show else ""
    return f"{'row' if len(rows) == 1 else 'rows'} {head}{more}"


def size_message(n: float) -> dict:
    """A number of bytes as a message ('512 bytes', '1.5 MB'): its number stays a number, for
    each language to write its own way (1,5 MB)."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            value = round(n) if unit == "bytes" or round(n, 1) == round(n) else round(n, 1)
            return {"id": f"size_{unit}", "params": {"n": value}}
        n /= 1024
    raise AssertionError("unreachable")


def size_words(n: float, text=None) -> str:
    """A number of bytes as a beginner reads it: '512 bytes', '1.5 MB' (`text` as in render)."""
    message = size_message(n)
    return render(message["id"], message["params"], text)


def _reason(exc: BaseException) -> str:
    """First line of the innermost cause: the wrapper exceptions of datasets say nothing useful."""
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text[:200]


def _to_text(value) -> str | None:
    """Cells become text so numbers in an answer column compare as written ("42", not 42)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _blank(value) -> bool:
    return value is None or not _to_text(value).strip()


def _norm(name) -> str:
    """Lower case, no accents, spaces and dashes as '_': 'Réponse finale' -> 'reponse_finale'."""
    text = unicodedata.normalize("NFKD", str(name).strip().lower())
    text = "".join(c for c in text if not unicodedata.combining(c)).replace("ß", "ss")
    return re.sub(r"[\s\-]+", "_", text)


def _check_shape(columns: int | None = None, rows: int | None = None, more: bool = False,
                 hub_split: str | None = None) -> None:
    """Refuse tables wider than MAX_COLUMNS or longer than MAX_ROWS, in one plain line."""
    if columns is not None and columns > MAX_COLUMNS:
        raise DataError("too_many_columns", count=columns, limit=MAX_COLUMNS)
    if rows is not None and rows > MAX_ROWS:
        if more:
            raise DataError("too_many_rows_more", limit=MAX_ROWS)
        if hub_split is not None:
            raise DataError("too_many_rows_hub", count=rows, limit=MAX_ROWS,
                            split=hub_split.split("[")[0], part=MAX_ROWS // 10)
        raise DataError("too_many_rows", count=rows, limit=MAX_ROWS)


def _one_line_errors(fn):
    """Whatever goes wrong inside a public function leaves it as a DataError, never a raw traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DataError:
            raise
        except OSError as exc:  # permissions, disk full, a file deleted halfway...
            reason = exc.strerror or _reason(exc)
            if exc.filename:
                raise DataError("unreadable_os", name=os.path.basename(str(exc.filename)),
                                reason=reason) from None
            raise DataError("unreadable_os_data", reason=reason) from None
        except Exception as exc:
            raise DataError("load_failed", reason=_reason(exc)) from None
    return wrapper


# ---------------------------------------------------------------- loading

@_one_line_errors
def load_table(source: str, split: str = "train", max_bytes: int = 500 * 2**20) -> datasets.Dataset:
    """Load a local file, a Hub dataset ("owner/name" or "owner/name:config") or "builtin:...".

    ``split`` only matters for Hub datasets; a file is always one table.
    """
    source = str(source or "").strip()
    if not source:
        raise DataError("no_source")
    if source.lower().startswith("builtin:"):
        return _load_builtin(source)
    if source.startswith(HUB_PREFIX):  # the Hub only: never a file or folder of this machine
        return _load_hub(source[len(HUB_PREFIX):], split, local=False)
    path = os.path.expanduser(source)
    ext = os.path.splitext(source)[1].lower()
    looks_like_path = (ext in FORMATS or ext in (".txt", ".xlsx", ".xls", ".ods")
                       or source.startswith((".", "/", "~")) or "\\" in source
                       or source.count("/") > 1 or not _HUB_ID.match(source))
    if os.path.exists(path) or looks_like_path:
        return _load_file(path, max_bytes)
    return _load_hub(source, split)


def _load_file(path: str, max_bytes: int) -> datasets.Dataset:
    name, ext = os.path.basename(path), os.path.splitext(path)[1].lower()
    if os.path.isdir(path):
        raise DataError("folder", name=name)
    if not os.path.isfile(path):
        raise DataError("file_not_found", path=path)
    if ext not in FORMATS:
        formats = ", ".join(FORMATS)
        if not ext:
            raise DataError("unsupported_no_ext", name=name, formats=formats)
        raise DataError("unsupported_excel" if ext in (".xlsx", ".xls", ".ods") else "unsupported_type",
                        name=name, ext=ext, formats=formats)
    size = os.path.getsize(path)
    if size == 0:
        raise DataError("file_empty", name=name)
    if size > max_bytes:
        raise DataError("file_too_big", name=name, size=size_message(size),
                        limit=size_message(max_bytes))
    builder, kwargs = FORMATS[ext], {}
    if builder == "parquet":
        _check_parquet_shape(path)
    else:
        path = _as_utf8(path, name)
    if builder == "json":
        _check_shape(columns=_json_first_row_columns(path))
    if builder == "csv":
        sep = "\t" if ext == ".tsv" else _csv_separator(path)
        names = _scan_csv(path, name, sep)
        # Every column as text: keeps "007" and "42" exactly as typed; only truly empty cells
        # become None (pandas would otherwise also turn "NA" or "None" answers into None).
        kwargs = dict(sep=sep, names=names, header=0, index_col=False, keep_default_na=False,
                      na_values=[""], features=datasets.Features({n: datasets.Value("string") for n in names}))
    try:
        ds = datasets.load_dataset(builder, data_files=path, split="train", **kwargs)
    except Exception as exc:
        if "corresponds to no data" in str(exc):  # how datasets reports a file with zero rows
            raise DataError("file_no_rows", name=name) from None
        problem = _json_problem(path) if builder == "json" else None
        if problem:
            raise DataError("unreadable", name=name, reason=problem) from None
        raise DataError("unreadable", name=name, reason=_reason(exc)) from None
    if ds.num_rows == 0:
        raise DataError("file_no_rows", name=name)
    _check_shape(columns=len(ds.column_names), rows=ds.num_rows)
    return _stringify(ds)


def _check_parquet_shape(path: str) -> None:
    """Column and row counts from the Parquet footer, without reading any data."""
    try:
        meta = pq.ParquetFile(path).metadata
        columns, rows = len(meta.schema.to_arrow_schema().names), meta.num_rows
    except Exception:  # not readable as Parquet: datasets says why, in the usual way
        return
    _check_shape(columns=columns, rows=rows)


def _json_first_row_columns(path: str) -> int | None:
    """The number of keys of the first object in a JSON / JSON Lines file, read from its start.

    Only a bounded prefix is parsed; None when that prefix doesn't hold a whole first object
    (the loaded table is checked later anyway).
    """
    with open(path, encoding="utf-8-sig") as f:
        text = f.read(_JSON_PEEK_CHARS).lstrip()
    if text.startswith("["):
        text = text[1:].lstrip()
    try:
        row, _ = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None
    return len(row) if isinstance(row, dict) else None


def _as_utf8(path: str, name: str) -> str:
    """Return a path to a clean UTF-8 copy of a text file (the file itself when it already is).

    Excel on Windows saves "CSV" as cp1252 and "Unicode text" as UTF-16; rather than make a
    beginner re-save, such files are re-encoded into a cached temp copy.
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        candidates = ["utf-16"]
    elif head.startswith(codecs.BOM_UTF8):
        candidates = ["utf-8-sig"]
    else:
        candidates = ["utf-8", "cp1252"]
    for encoding in candidates:
        blank = _decode_check(path, encoding)
        if blank is None:
            continue
        if blank:
            raise DataError("file_empty", name=name)
        if encoding == "utf-8":
            return path
        stat = os.stat(path)
        key = hashlib.sha1(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
        folder = os.path.join(tempfile.gettempdir(), "aha-studio-utf8")
        os.makedirs(folder, exist_ok=True)
        copy = os.path.join(folder, key + os.path.splitext(path)[1].lower())
        if not os.path.exists(copy):
            part = f"{copy}.{os.getpid()}.part"
            with open(path, encoding=encoding, newline="") as src, \
                    open(part, "w", encoding="utf-8", newline="") as dst:
                while chunk := src.read(2**20):
                    dst.write(chunk)
            os.replace(part, copy)
        return copy
    raise DataError("not_utf8", name=name)


def _decode_check(path: str, encoding: str) -> bool | None:
    """None if the file doesn't decode cleanly, else whether it holds only whitespace."""
    decoder, blank = codecs.getincrementaldecoder(encoding)(), True
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(2**20)
                text = decoder.decode(chunk, final=not chunk)
                if "\x00" in text:  # binary file, or UTF-16 without a BOM
                    return None
                blank = blank and not text.strip()
                if not chunk:
                    return blank
    except UnicodeDecodeError:
        return None


def _csv_separator(path: str) -> str:
    """',' or ';' (what spreadsheets write where the comma is the decimal sign), from the
    header line."""
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline(1 << 20)
    return ";" if header.count(";") > header.count(",") else ","


def _scan_csv(path: str, name: str, sep: str) -> list[str]:
    """Check the header and row shapes with the csv module; return the column names.

    pandas silently renames duplicate headers ("question.1") and, when a row has more values
    than the header, quietly shifts columns; both would give confusing results later.
    """
    # Long questions are legitimate (the file size is capped anyway). Only ever raised, never
    # restored, so concurrent scans can't shrink it under each other.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=sep, strict=True)
        header, rows, too_long = None, 0, []
        while True:
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                unclosed = "unexpected end of data" in str(exc)
                if header is None:
                    raise DataError("csv_quote_header" if unclosed else "csv_broken_header",
                                    name=name, reason=str(exc)) from None
                raise DataError("csv_quote_row" if unclosed else "csv_broken_row",
                                name=name, row=rows + 1, reason=str(exc)) from None
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # pandas skips blank lines too, so row numbers stay in step
            if header is None:
                header = record
                _check_shape(columns=len(header))  # before anything reads the rows
                continue
            rows += 1
            if rows > MAX_ROWS:
                _check_shape(rows=rows, more=True)
            if len(record) > len(header):
                too_long.append(rows)
    if header is None:
        raise DataError("file_empty", name=name)
    names = [h.strip() or f"column_{i + 1}" for i, h in enumerate(header)]
    dupes = [n for n, count in Counter(names).items() if count > 1]
    if dupes:
        raise DataError("csv_same_column", name=name, column=dupes[0])
    if rows == 0:
        raise DataError("file_header_only", name=name)
    if too_long:
        what = {"\t": "sep_tabs", ";": "sep_semicolons"}.get(sep, "sep_commas")
        raise DataError("csv_extra_values_one" if len(too_long) == 1 else "csv_extra_values",
                        name=name, rows=too_long, count=len(names), sep={"id": what})
    return names


def _json_problem(path: str) -> dict | None:
    """Find the line of a broken JSON/JSON Lines file (pyarrow's own message lacks it)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except Exception:  # diagnosis is best effort; the caller has a fallback message
        return None
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            return {"id": "json_invalid", "params": {"line": exc.lineno, "reason": exc.msg}}
        if not all(isinstance(r, dict) for r in rows):
            return {"id": "json_list_objects"}
        return None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            return {"id": "json_line_invalid", "params": {"line": number, "reason": exc.msg}}
        if not isinstance(row, dict):
            return {"id": "json_line_not_object", "params": {"line": number}}
    return None


def _stringify(ds: datasets.Dataset) -> datasets.Dataset:
    """Turn scalar columns into text; nested columns (e.g. chat message lists) stay as they are.

    All columns are cast in one pass: casting them one at a time rewrites the whole table per
    column, which is quadratic in the number of columns (minutes for a few hundred).
    """
    to_cast, to_map = [], []
    for col, feature in ds.features.items():
        if isinstance(feature, datasets.Value) and feature.dtype not in ("string", "large_string"):
            to_cast.append(col)
        elif isinstance(feature, getattr(datasets, "Json", ())):  # mixed types in one column, e.g. 42 and "x"
            to_map.append(col)
    if to_cast:
        try:
            ds = ds.cast(datasets.Features({**ds.features, **{c: datasets.Value("string") for c in to_cast}}))
        except Exception:
            # Some column can't be cast by Arrow: find which ones (one cheap pass), cast the
            # rest together and convert those few value by value instead.
            failed = []
            for col in to_cast:
                try:
                    pc.cast(ds.data.column(col), "string")
                except Exception:
                    failed.append(col)
            castable = [c for c in to_cast if c not in failed]
            if castable:
                ds = ds.cast(datasets.Features({**ds.features,
                                                **{c: datasets.Value("string") for c in castable}}))
            to_map += failed
    if to_map:
        features = datasets.Features({**ds.features, **{c: datasets.Value("string") for c in to_map}})
        ds = ds.map(lambda batch: {c: [_to_text(v) for v in batch[c]] for c in to_map},
                    batched=True, features=features, desc="Reading values as text")
    return ds


def _load_hub(source: str, split: str, local: bool = True) -> datasets.Dataset:
    """A Hub dataset; with `local` False, a name that is also a file or folder here is refused
    (`datasets.load_dataset` would read that folder's files: a shared server's own)."""
    repo, _, config = source.partition(":")
    if not local and (not _HUB_ID.match(source) or ".." in repo or os.path.lexists(repo)
                      or os.path.lexists(repo.split("/")[0] + ".py")):
        raise DataError("hub_not_found", repo=repo)
    try:
        ds = datasets.load_dataset(repo, config or None, split=split)
    except Exception as exc:
        message, reason = str(exc).lower(), _reason(exc)
        if isinstance(exc, ConnectionError) or "couldn't reach" in message or "offline" in message:
            raise DataError("hub_offline", source=source) from None
        if isinstance(exc, (DatasetNotFoundError, FileNotFoundError)):
            raise DataError("hub_not_found", repo=repo) from None
        if "config name is missing" in message or "builderconfig" in message:
            found = re.search(r"\[([^\]]*)\]", str(exc))
            if found:
                raise DataError("hub_needs_config_options", repo=repo,
                                options=found.group(1).replace(chr(39), "")) from None
            raise DataError("hub_needs_config", repo=repo) from None
        if "split" in message:
            raise DataError("hub_no_split", repo=repo, split=split, reason=reason) from None
        raise DataError("hub_failed", source=source, reason=reason) from None
    if not isinstance(ds, datasets.Dataset) or ds.num_rows == 0:
        raise DataError("hub_no_rows", source=source, split=split)
    _check_shape(columns=len(ds.column_names), rows=ds.num_rows, hub_split=split)
    return _stringify(ds)


def _load_builtin(source: str) -> datasets.Dataset:
    name, _, query = source[len("builtin:"):].partition("?")
    if name.strip().lower() != "arithmetic":
        raise DataError("builtin_unknown", name=name)
    options = {}
    for part in filter(None, query.split("&")):
        key, _, value = part.partition("=")
        key, value = key.strip().lower(), unquote(value).strip()  # unquote, not unquote_plus: '+' is an operation
        if key not in ("n", "seed", "max_operand", "operations"):
            raise DataError("builtin_option", option=key)
        if key != "operations":
            if not re.fullmatch(r"-?\d+", value):
                raise DataError("builtin_whole_number", option=key, value=value)
            value = int(value)
        options[key] = value
    return arithmetic_dataset(**options)


@_one_line_errors
def arithmetic_dataset(n: int = 1000, seed: int = 0, max_operand: int = 9, operations: str = "+") -> datasets.Dataset:
    """Seeded "What is 7 + 5?" problems: a dataset that needs no download, for first runs and demos.

    Columns: question, answer ("12") and answer_full ("7 + 5 = 12").
    """
    ops = str(operations).replace(" ", "")
    if not ops or set(ops) - set("+-*"):
        raise DataError("arithmetic_operations", value=operations)
    if not 1 <= n <= 1_000_000:
        raise DataError("arithmetic_count", value=n)
    if max_operand < 1:
        raise DataError("arithmetic_max_operand", value=max_operand)
    rng = random.Random(seed)
    questions, answers, full = [], [], []
    for _ in range(n):
        op, a, b = rng.choice(ops), rng.randint(0, max_operand), rng.randint(0, max_operand)
        if op == "-" and b > a:
            a, b = b, a  # beginners' models shouldn't need negative numbers
        result = a + b if op == "+" else a - b if op == "-" else a * b
        questions.append(f"What is {a} {op} {b}?")
        answers.append(str(result))
        full.append(f"{a} {op} {b} = {result}")
    return datasets.Dataset.from_dict({"question": questions, "answer": answers, "answer_full": full})


# ---------------------------------------------------------------- columns and answers

def _find(free: list[tuple[str, str]], names: tuple[str, ...], suffix: bool) -> str | None:
    """The column matching the first possible name; `free` holds (column, normalised column)."""
    for name in names:  # the preference order of `names` wins over column order
        hit = (next((c for c, _ in free if c == name), None)
               or next((c for c, n in free if n == name), None))
        if hit:
            return hit
    if suffix:  # e.g. "user_question", "Final Answer"
        for name in names:
            hit = next((c for c, n in free if n.endswith("_" + name) and n not in SYSTEM_NAMES), None)
            if hit:
                return hit
    return None


def _guess(columns: list[str], taken: set[str], roles=("question", "answer", "system")) -> dict:
    """Detect the given roles among columns not already taken: exact names first, then suffixes."""
    names = {"question": QUESTION_NAMES, "answer": ANSWER_NAMES, "system": SYSTEM_NAMES}
    found = {}
    normalised = [(c, _norm(c)) for c in columns]  # once, not once per name tried
    for suffix in (False, True):
        for role in roles:
            if found.get(role) is None and not (suffix and role == "system"):
                chosen = set(taken) | {c for c in found.values() if c is not None}
                found[role] = _find([p for p in normalised if p[0] not in chosen], names[role], suffix)
    return found


def _no_question(columns: list[str]) -> DataError:
    if not columns:
        return DataError("no_question_no_columns")
    return DataError("no_question", columns=[str(c) for c in columns])


def detect_columns(column_names: list[str]) -> ColumnMapping:
    """Guess which columns hold the question, answer and system prompt."""
    columns = [str(c) for c in column_names]
    found = _guess(columns, set())
    if found["question"] is None:
        raise _no_question(columns)
    return ColumnMapping(**found)


def _resolve_mapping(columns: list[str], question=None, answer=None, system=None,
                     rows: list[dict] | None = None) -> ColumnMapping:
    """Explicit choices must exist (case and spaces forgiven); the rest is detected by name,
    then by content (`rows`, a sample of the table): a column of numbers is the answer, and
    with one column left over for a role, that column."""
    def pick(name):
        if not name or name in columns:
            return name or None
        wanted = _norm(name)
        same = [c for c in columns if _norm(c) == wanted]
        if len(same) == 1:
            return same[0]
        raise DataError("column_not_found", column=name, columns=[str(c) for c in columns])

    chosen = {"question": pick(question), "answer": pick(answer), "system": pick(system)}
    missing = [role for role, col in chosen.items() if col is None]
    chosen.update(_guess(columns, {c for c in chosen.values() if c}, missing))
    free = [c for c in columns if c not in chosen.values()]
    if chosen["answer"] is None and rows:
        numeric = [c for c in free if _mostly_numbers([r.get(c) for r in rows])]
        if len(numeric) == 1:
            chosen["answer"] = numeric[0]
            free.remove(numeric[0])
    if len(free) == 1 and len(columns) == 2:  # two columns, one known: the other is the other
        for role in ("question", "answer"):
            if chosen[role] is None:
                chosen[role] = free.pop()
                break
    if chosen["question"] is None:
        raise _no_question(columns)
    return ColumnMapping(**chosen)


def _sample(ds: datasets.Dataset, n: int = 50) -> list[dict]:
    """The first rows, for detecting columns by their contents."""
    return ds.select(range(min(n, ds.num_rows))).to_list()


def _mostly_numbers(values: list, share: float = 0.8) -> bool:
    """Short numeric values ("42", "-3.5", "1,200", "#### 7") in at least `share` of the
    non-empty cells."""
    texts = [str(v).strip() for v in values if v is not None and str(v).strip()]
    if not texts:
        return False
    numbers = sum(1 for t in texts
                  if len(t) <= 30 and re.fullmatch(r"(####\s*)?[-+]?[\d.,]+%?", t))
    return numbers >= share * len(texts)


def extract_final_answer(text: str | None) -> str | None:
    """'... #### 1,234' -> '1234'; '\\boxed{42}' -> '42'; anything else: the text, stripped."""
    if text is None:
        return None
    text = _to_text(text)
    if "####" in text:
        final = text.rsplit("####", 1)[1].strip()
    elif "\\boxed{" in text:
        start = text.rindex("\\boxed{") + len("\\boxed{")
        depth, end = 1, start
        while end < len(text) and depth:  # braces may nest: \boxed{\frac{1}{2}}
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        final = text[start:end - 1 if depth == 0 else end].strip()
    else:
        return text.strip()
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", final)


# ---------------------------------------------------------------- checking and preparing

def _column(ds: datasets.Dataset, name: str) -> list:
    # Through Arrow: iterating a datasets Column row by row is ~50x slower on big tables.
    return ds.with_format("arrow")[name].to_pylist()


def is_builtin(source) -> bool:
    return str(source or "").strip().lower().startswith("builtin:")


def _validate(ds: datasets.Dataset, report: DataReport, rewards: list[str]) -> None:
    """Fill report.errors / warnings / rows_without_answer for an already-mapped table."""
    m = report.mapping
    questions = [_to_text(q) for q in _column(ds, m.question)]
    empty = [i for i, q in enumerate(questions, 1) if _blank(q)]
    if empty:
        report.add("error", "question_empty", column=m.question, rows=empty)
    if m.answer is None:
        report.rows_without_answer = list(range(1, len(questions) + 1))
        if rewards:
            report.add("warning", "no_answer_column_rewards", rewards=list(rewards))
        else:
            report.add("warning", "no_answer_column")
    else:
        report.rows_without_answer = [i for i, a in enumerate(_column(ds, m.answer), 1)
                                      if not extract_final_answer(_to_text(a))]
        missing = report.rows_without_answer
        if missing and len(missing) == len(questions):
            if rewards:
                report.add("warning", "answer_empty_all_rewards", column=m.answer, rewards=list(rewards))
            else:
                report.add("warning", "answer_empty_all", column=m.answer)
        elif missing and rewards:
            report.add("warning", "answer_empty_rows", column=m.answer, rows=missing,
                       rewards=list(rewards))
    if rewards and report.rows_without_answer:
        report.unusable_rewards = list(rewards)
    # The built-in arithmetic set draws its problems at random from a small pool on purpose (a
    # classroom demo asks 500 of the 100 sums of one-digit numbers): nobody can fix its repeats.
    seen, repeats = set(), []
    for i, q in enumerate(questions, 1):
        key = (q or "").strip()
        if key in seen and key:
            repeats.append(i)
        seen.add(key)
    if repeats and not is_builtin(report.source):
        if len(repeats) == 1:
            report.add("warning", "duplicate", rows=repeats)
        else:
            report.add("warning", "duplicates", count=len(repeats), rows=repeats)
    long = [i for i, q in enumerate(questions, 1) if q and len(q) > LONG_QUESTION_CHARS]
    if long:
        report.add("warning", "long_questions", limit=LONG_QUESTION_CHARS, rows=long)


def check_data(source: str, question: str | None = None, answer: str | None = None,
               system: str | None = None, rewards_needing_answer: list[str] = (),
               split: str = "train", time_limit: float | None = None) -> DataReport:
    """Load and inspect a data source; problems go into the report instead of being raised.

    With ``time_limit`` (seconds) the check runs in a child process that is killed when it
    takes longer, so a huge or pathological input can never hang the caller; the report then
    carries a one-line error saying so.
    """
    if time_limit is not None:
        return _check_in_child(time_limit, source=source, question=question, answer=answer,
                               system=system, rewards_needing_answer=list(rewards_needing_answer or ()),
                               split=split)
    report = DataReport(source=str(source))
    try:
        ds = load_table(source, split=split)
        report.num_rows, report.columns = ds.num_rows, list(ds.column_names)
        report.mapping = _resolve_mapping(report.columns, question, answer, system, _sample(ds))
        rewards = [rewards_needing_answer] if isinstance(rewards_needing_answer, str) else rewards_needing_answer
        _validate(ds, report, [str(r) for r in rewards or ()])
    except DataError as exc:
        report.note(exc)
    except Exception as exc:  # a report must always come back, even for a case nobody foresaw
        report.add("error", "check_failed", reason=_reason(exc))
    return report


def _check_in_child(seconds: float, **kwargs) -> DataReport:
    """check_data in a child process (`python -m core.data`), killed once `seconds` have
    passed. A plain subprocess: it leaves nothing running behind (no multiprocessing helper
    process) and never re-imports the caller's main module."""
    source = str(kwargs.get("source"))
    from .runs import child_env

    env = child_env(HF_DATASETS_CACHE=str(datasets.config.HF_DATASETS_CACHE),
                    HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    failed = DataReport(source=source)
    try:
        done = subprocess.run([sys.executable, "-m", "core.data"], input=json.dumps(kwargs),
                              capture_output=True, text=True, timeout=max(0.01, float(seconds)),
                              env=env)
    except subprocess.TimeoutExpired:
        failed.add("error", "check_too_slow", seconds=f"{seconds:g}")
        return failed
    except OSError as exc:
        failed.add("error", "check_failed", reason=_reason(exc))
        return failed
    try:
        data = json.loads(done.stdout.strip().splitlines()[-1])
        mapping = data.pop("mapping", None)
        mapping = ColumnMapping(**mapping) if mapping else None
        return DataReport(**data, mapping=mapping)
    except (ValueError, IndexError, TypeError):
        failed.add("error", "check_crashed", code=done.returncode)
        return failed


def _check_main() -> int:
    """`python -m core.data`: one check_data call, its arguments as JSON on stdin, the report
    as one JSON line on stdout."""
    import dataclasses

    kwargs = json.loads(sys.stdin.read() or "{}")
    try:
        report = check_data(**kwargs)
    except BaseException as exc:  # noqa: BLE001 - the parent must always get a report
        report = DataReport(source=str(kwargs.get("source")))
        report.add("error", "check_failed", reason=_reason(exc))
    print(json.dumps(dataclasses.asdict(report)))
    return 0


def _training_rows(batch, indices, mapping: ColumnMapping, system_prompt: str):
    raw = [_to_text(a) for a in batch[mapping.answer]] if mapping.answer else [None] * len(indices)
    systems = [_to_text(s) for s in batch[mapping.system]] if mapping.system else [None] * len(indices)
    return {
        "question": [_to_text(q) for q in batch[mapping.question]],
        "answer": [extract_final_answer(a) or None for a in raw],
        "answer_full": [a if a and a.strip() else None for a in raw],
        "system": [s if s and s.strip() else system_prompt for s in systems],
        "row": [i + 1 for i in indices],
    }


@_one_line_errors
def prepare_dataset(source: str, question: str | None = None, answer: str | None = None,
                    system: str | None = None, system_prompt: str = "", max_rows: int | None = None,
                    require_answer: bool = False, split: str = "train") -> datasets.Dataset:
    """Load, map and validate; return columns question, answer, answer_full, system, row."""
    ds = load_table(source, split=split)
    if max_rows is not None:
        if max_rows < 1:
            raise DataError("max_rows", value=max_rows)
        ds = ds.select(range(min(max_rows, ds.num_rows)))
    report = DataReport(source=str(source), num_rows=ds.num_rows, columns=list(ds.column_names))
    report.mapping = _resolve_mapping(report.columns, question, answer, system, _sample(ds))
    _validate(ds, report, [])
    if report.errors:
        first = next(m for m in report.messages if m["level"] == "error")
        raise DataError(first["id"], **first["params"])
    if require_answer and report.rows_without_answer:
        if report.mapping.answer is None:
            raise DataError("answers_needed")
        raise DataError("answers_needed_rows", column=report.mapping.answer,
                        rows=report.rows_without_answer)
    return ds.map(_training_rows, batched=True, with_indices=True, remove_columns=ds.column_names,
                  features=_TRAIN_FEATURES, desc="Preparing rows",
                  fn_kwargs={"mapping": report.mapping, "system_prompt": str(system_prompt or "")})


# ---------------------------------------------------------------- held-out split

def heldout_questions(questions: list[str], share: float) -> set[str]:
    """The distinct questions kept aside for evaluation: ceil(share x distinct), chosen by hash.

    Chosen from the text alone, so the same data gives the same held-out set whatever the seed,
    the row order or a resume, and a question asked twice lands on one side only: training never
    sees a held-out question. At least one question stays for training.
    """
    distinct = sorted(set(questions), key=lambda q: hashlib.sha256(q.encode("utf-8")).digest())
    if share <= 0 or len(distinct) < 2:
        return set()
    k = min(len(distinct) - 1, max(1, math.ceil(share * len(distinct) - 1e-9)))
    return set(distinct[:k])


def split_heldout(ds: datasets.Dataset, share: float) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(training rows, held-out rows, one per distinct question) of a prepared dataset."""
    questions = ds["question"][:]
    held = heldout_questions(questions, share)
    train_idx = [i for i, q in enumerate(questions) if q not in held]
    seen, eval_idx = set(), []
    for i, q in enumerate(questions):
        if q in held and q not in seen:
            seen.add(q)
            eval_idx.append(i)
    return ds.select(train_idx), ds.select(eval_idx)


def dedupe_questions(ds: datasets.Dataset) -> datasets.Dataset:
    """One row per distinct question (the first), for scoring a separate evaluation set."""
    seen, keep = set(), []
    for i, q in enumerate(ds["question"][:]):
        if q not in seen:
            seen.add(q)
            keep.append(i)
    return ds.select(keep)


def prepare_run_data(d) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """(training rows, evaluation rows or None) for a run's DataConfig.

    With `eval_source` the evaluation rows come from that file or Hub split (same columns) and
    the training data is used whole; otherwise `eval_share` of the distinct questions is held
    out of the training data.
    """
    ds = prepare_dataset(d.source, question=d.question_column, answer=d.answer_column,
                         system=d.system_column, system_prompt=d.system_prompt,
                         max_rows=d.max_rows, split=d.split)
    if d.eval_source:
        held = prepare_dataset(d.eval_source, question=d.question_column, answer=d.answer_column,
                               system=d.system_column, system_prompt=d.system_prompt,
                               split=d.eval_split)
        return ds, dedupe_questions(held)
    train, held = split_heldout(ds, d.eval_share)
    return train, (held if held.num_rows else None)


if __name__ == "__main__":
    sys.exit(_check_main())
