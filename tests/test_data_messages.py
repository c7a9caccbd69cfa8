"""Data-check messages in the page's language, uploads under the user's own file name, and no
warning about the built-in sets' repeats. Real files, real `datasets`; no browser."""
import os
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from core.data import DataError, arithmetic_dataset, check_data, load_table, render
from studio.access import RUN_ID
from studio.i18n import catalog, speaking
from studio.step_data import (CHECK_SECONDS, SAMPLE_SOURCE, Cleared, inspect_source,
                              keep_upload, message_text, report_markdown, shown_name,
                              shown_source, size_text, stored_name)

ROOT = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_the_messages_a_beginner_saw_in_english_are_german_on_the_german_page(tmp_path):
    empty = write(tmp_path / "e3b0c44298fc-leer.csv", "")
    binary = tmp_path / "0123456789ab-bild.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    repeats = write(tmp_path / "fragen.csv",
                    "Frage\n" + "".join(f"Was ist {i % 3} + 1?\n" for i in range(8)))
    shown = {}
    for lang in ("de", "en"):
        with speaking(lang):
            shown[lang] = [inspect_source(str(p), needing=["numeric_match"])[3]
                           for p in (empty, binary, repeats)]
    de, en = shown["de"], shown["en"]
    assert de[0] == "- ❌ Die Datei leer.csv ist leer."
    assert en[0] == "- ❌ The file leer.csv is empty."  # the user's name, not the kept copy's
    assert "Die Datei bild.csv ist kein UTF-8-Text" in de[1] and "0123456789ab" not in de[1]
    assert "Keine Spalte mit Antworten gefunden" in de[2] and "numeric_match" in de[2]
    assert "5 doppelte Fragen (wiederholen eine frühere Zeile) in den Zeilen 4, 5, 6, 7, 8" in de[2]
    assert "5 duplicate questions (repeating an earlier row) in rows 4, 5, 6, 7, 8" in en[2]
    for text in de:
        assert "The file" not in text and "duplicate" not in text and "No answer" not in text


def test_row_and_name_lists_are_written_in_the_page_language():
    de = catalog("de")

    def german(msg_id):
        return de[f"data.msg.{msg_id}"]

    rows = list(range(1, 13))
    assert render("question_empty", {"column": "q", "rows": rows}) == \
        "Column 'q' is empty in rows 1, 2, 3, 4, 5 and 7 more; every row needs a question."
    assert render("question_empty", {"column": "q", "rows": rows}, german) == \
        "Die Spalte „q“ ist in den Zeilen 1, 2, 3, 4, 5 und 7 weiteren leer; jede Zeile braucht eine Frage."
    assert render("question_empty", {"column": "q", "rows": [3]}, german) == \
        "Die Spalte „q“ ist in Zeile 3 leer; jede Zeile braucht eine Frage."
    columns = [f"c{i}" for i in range(25)]
    assert render("no_question", {"columns": columns}, german).count("und 5 weitere") == 1


def test_sizes_are_written_with_the_page_languages_decimal_mark(tmp_path):
    big = write(tmp_path / "gross.csv", "question,answer\n" + "Was ist 1 + 1?,2\n" * 100_000)
    with pytest.raises(DataError) as caught:
        load_table(str(big), max_bytes=1024 * 1024)
    assert str(caught.value) == \
        "The file gross.csv is 1.6 MB, over the 1 MB limit; use a smaller file."  # command line
    with speaking("de"):
        shown = message_text(caught.value.to_message(), str(big))
        assert size_text(1536) == "1,5 KB" and size_text(12) == "12 Bytes"
    assert shown == ("Die Datei gross.csv ist 1,6 MB groß, mehr als die erlaubten 1 MB; "
                     "nimm eine kleinere Datei.")
    with speaking("en"):
        assert size_text(1536) == "1.5 KB" and size_text(3 * 2**30) == "3 GB"


def test_the_command_line_keeps_english_and_errors_keep_their_id(tmp_path):
    path = write(tmp_path / "x.csv", "question,answer\n\"a,1\n")
    report = check_data(path)
    assert report.errors == ["The file x.csv is broken: row 1 has a quote (\") that is never closed."]
    assert report.messages == [{"level": "error", "id": "csv_quote_row",
                                "params": {"name": "x.csv", "row": 1, "reason": report.messages[0]["params"]["reason"]},
                                "text": report.errors[0]}]
    assert "Errors (1)" in report.format()
    exc = DataError("file_empty", name="a.csv")
    back = pickle.loads(pickle.dumps(exc))
    assert str(back) == "The file a.csv is empty." and back.msg_id == "file_empty"
    assert DataError("any text\nat all").msg_id is None and str(DataError("x\ny")) == "x y"


def test_a_check_in_a_child_process_keeps_the_message_ids(tmp_path):
    path = write(tmp_path / "0123456789ab-leer.csv", "   \n")
    report = check_data(str(path), time_limit=60)
    assert report.messages[0]["id"] == "file_empty"
    with speaking("de"):
        assert report_markdown(report) == "- ❌ Die Datei leer.csv ist leer."


@pytest.mark.parametrize("source", [
    SAMPLE_SOURCE,
    yaml.safe_load((ROOT / "examples" / "01-classroom-demo.yaml").read_text())["data"]["source"],
])
def test_the_built_in_sets_do_not_warn_about_their_own_repeats(source, tmp_path):
    report = check_data(source, rewards_needing_answer=["numeric_match"])
    assert report.ok and report.warnings == [] and report.messages == []
    # the very same rows in a user's file still get the warning: it is the user's to fix there
    rows = arithmetic_dataset(n=report.num_rows, max_operand=9)
    path = tmp_path / "same.csv"
    rows.to_csv(str(path), index=False)
    assert any("duplicate questions" in w for w in check_data(str(path)).warnings)


def test_uploads_keep_the_users_file_name(tmp_path):
    uploads = tmp_path / "uploads"
    first = write(tmp_path / "summen.csv", "question,answer\n1+1,2\n")
    kept = Path(keep_upload(str(first), uploads))
    assert kept.name == "summen.csv" and kept.read_text() == first.read_text()
    assert keep_upload(str(first), uploads) == str(kept)  # the same bytes: one copy
    other = tmp_path / "again" / "summen.csv"
    other.parent.mkdir()
    write(other, "question,answer\n2+2,4\n")
    assert Path(keep_upload(str(other), uploads)).name == "summen-2.csv"
    assert kept.read_text() == first.read_text()  # the first one is left as it was
    for name, stored in (("Übung 1 (neu).CSV", "Ubung_1__neu_.CSV"), ("Maß.csv", "Mass.csv"),
                         ("..csv", "data.csv"), (".csv", "data.csv"), ("日本.csv", "data.csv"),
                         ("-x.tsv", "x.tsv"),
                         ("a" * 200 + ".jsonl", "a" * 72 + ".jsonl")):
        assert stored_name(name) == stored, name
        assert RUN_ID.fullmatch(stored_name(name)), name  # an upload ref allows it
    assert shown_name("1c605133a415-summen.csv") == "summen.csv" and shown_name("summen.csv") == "summen.csv"
    assert shown_source("upload:1c605133a415-summen.csv") == "summen.csv"
    assert shown_source("openai/gsm8k:main") == "openai/gsm8k:main"


def test_a_shared_studio_reads_a_file_in_a_child_process_once_per_version(tmp_path):
    gate = Cleared()
    path = write(tmp_path / "summen.csv", "question,answer\n1+1,2\n")
    assert gate.time_limit(str(path), CHECK_SECONDS) == CHECK_SECONDS
    report = check_data(str(path), time_limit=CHECK_SECONDS)  # the child process
    gate.note(str(path), bool(report.columns))
    assert report.columns == ["question", "answer"]
    assert gate.time_limit(str(path), CHECK_SECONDS) is None  # the same file: no second child
    before = path.stat().st_mtime_ns
    write(path, "question,answer\n1+1,2\n2+2,4\n")
    os.utime(path, ns=(before + 10**9, before + 10**9))
    assert gate.time_limit(str(path), CHECK_SECONDS) == CHECK_SECONDS  # changed: checked again
    empty = write(tmp_path / "leer.csv", "")
    report = check_data(str(empty), time_limit=CHECK_SECONDS)
    gate.note(str(empty), bool(report.columns))
    assert report.errors and gate.time_limit(str(empty), CHECK_SECONDS) == CHECK_SECONDS
    hub = "hub:someone/sums"  # its owner may push a new revision at any moment: never cleared
    gate.note(hub, True)
    assert gate.time_limit(hub, CHECK_SECONDS) == CHECK_SECONDS
    files = [write(tmp_path / f"t{n}.csv", f"question,answer\n{n}+1,{n + 1}\n")
             for n in range(Cleared.KEEP)]
    for f in files:
        gate.note(str(f), True)
    gate.time_limit(str(files[0]), CHECK_SECONDS)  # used again: the last to be forgotten
    gate.note(str(path), True)
    assert gate.time_limit(str(files[0]), CHECK_SECONDS) is None
    assert gate.time_limit(str(files[1]), CHECK_SECONDS) == CHECK_SECONDS  # least recently used


def test_uploads_of_one_name_at_once_each_keep_their_own_whole_file(tmp_path):
    uploads = tmp_path / "uploads"
    sources = []
    for n in range(8):  # four different files of one name, each sent twice at the same time
        folder = tmp_path / f"browser-{n}"
        folder.mkdir()
        body = "question,answer\n" + f"{n % 4}+1,{n % 4 + 1}\n" * (20_000 + n % 4)
        sources.append(write(folder / "summen.csv", body))
    start = threading.Barrier(len(sources))

    def upload(src):
        start.wait()
        return keep_upload(str(src), uploads)

    with ThreadPoolExecutor(len(sources)) as pool:
        kept = list(pool.map(upload, sources))
    for src, path in zip(sources, kept):
        assert Path(path).read_bytes() == src.read_bytes()  # whole, and its own
    assert len(set(kept)) == 4  # the same bytes once, each other file under a name of its own
    assert sorted(p.name for p in uploads.iterdir()) == \
        ["summen-2.csv", "summen-3.csv", "summen-4.csv", "summen.csv"]  # nothing half-made left
