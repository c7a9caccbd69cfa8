"""Tests for core.data against real files and the real `datasets` library (no network)."""
import math
import json
import time

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.data import (
    MAX_COLUMNS,
    MAX_ROWS,
    ColumnMapping,
    DataError,
    arithmetic_dataset,
    check_data,
    detect_columns,
    extract_final_answer,
    load_table,
    prepare_dataset,
)

ROWS = [
    {"question": "What is 2 + 2?", "answer": 4},
    {"question": "Capital of France?", "answer": "Paris"},
    {"question": "What is 40 + 2?", "answer": 42},
]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Keep the arrow cache out of the user's home; one shared folder keeps repeated loads fast.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "hf-cache"))


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return str(path)


def write_format(tmp_path, ext):
    path = tmp_path / f"data.{ext}"
    if ext == "csv":
        return write(path, "question,answer\nWhat is 2 + 2?,4\nCapital of France?,Paris\nWhat is 40 + 2?,42\n")
    if ext == "tsv":
        return write(path, "question\tanswer\nWhat is 2 + 2?\t4\nCapital of France?\tParis\nWhat is 40 + 2?\t42\n")
    if ext == "json":
        return write(path, json.dumps(ROWS, indent=2))
    if ext in ("jsonl", "JSONL"):
        return write(path, "".join(json.dumps(r) + "\n" for r in ROWS))
    # Parquet columns have one type each, so the numbers get a column of their own here.
    datasets.Dataset.from_dict({"question": [r["question"] for r in ROWS], "answer": ["4", "Paris", "42"],
                                "points": [1, 2, 3]}).to_parquet(str(path))
    return str(path)


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ---------------------------------------------------------------- loading formats

@pytest.mark.parametrize("ext", ["csv", "tsv", "json", "jsonl", "JSONL", "parquet"])
def test_each_format_loads_rows_as_text(tmp_path, ext):
    ds = load_table(write_format(tmp_path, ext))
    assert ds.num_rows == 3
    assert ds["question"][:] == [r["question"] for r in ROWS]
    assert ds["answer"][:] == ["4", "Paris", "42"]  # numbers come back exactly as written
    if ext == "parquet":
        assert ds["points"][:] == ["1", "2", "3"]


def test_csv_keeps_text_and_turns_empty_cells_into_none(tmp_path):
    path = write(tmp_path / "d.csv", 'question,answer\n"multi\nline, with comma",007\nq2,NA\nq3,\n\nq4\n')
    ds = load_table(path)
    assert ds.to_list() == [
        {"question": "multi\nline, with comma", "answer": "007"},
        {"question": "q2", "answer": "NA"},
        {"question": "q3", "answer": None},
        {"question": "q4", "answer": None},  # short rows are missing values, not an error
    ]


def test_json_with_mixed_types_in_a_column_becomes_text(tmp_path):
    path = write(tmp_path / "d.json", json.dumps([{"q": "a", "answer": 42}, {"q": "b", "answer": "x"},
                                                  {"q": "c", "answer": 2.0}]))
    assert load_table(path)["answer"][:] == ["42", "x", "2"]


def test_loading_twice_gives_the_same_table(tmp_path):
    path = write_format(tmp_path, "csv")
    assert load_table(path).to_list() == load_table(path).to_list()


# ---------------------------------------------------------------- bad files

def test_missing_file_unknown_type_and_folder(tmp_path):
    assert "not found" in error_of(load_table, str(tmp_path / "nope.csv"))
    xlsx = write(tmp_path / "d.xlsx", b"PK\x03\x04")
    message = error_of(load_table, xlsx)
    assert ".csv" in message and ".parquet" in message and "CSV UTF-8" in message
    assert ".txt" in error_of(load_table, write(tmp_path / "notes.txt", "hi"))
    assert "folder" in error_of(load_table, str(tmp_path) + "/")
    assert "not found" in error_of(load_table, "my data")  # no extension, not a Hub name either


def raiser(exc):
    def fail(*args, **kwargs):
        raise exc
    return fail


def test_unexpected_failures_still_become_one_line_errors(tmp_path, monkeypatch):
    import core.data

    path = write_format(tmp_path, "csv")
    monkeypatch.setattr(core.data, "_stringify", raiser(PermissionError(13, "Permission denied", "/x/d.csv")))
    assert error_of(load_table, path) == "Couldn't read d.csv: Permission denied."
    monkeypatch.setattr(datasets, "load_dataset", raiser(RuntimeError("boom\nmore")))
    assert error_of(load_table, path) == "Couldn't read data.csv: boom"
    assert check_data(path).errors == ["Couldn't read data.csv: boom"]


def test_blank_header_cells_get_a_name(tmp_path):
    ds = load_table(write(tmp_path / "d.csv", "question,answer,\nq,1,\n"))
    assert ds.to_list() == [{"question": "q", "answer": "1", "column_3": None}]


@pytest.mark.parametrize("name,content", [
    ("empty.csv", ""), ("header.csv", "question,answer\n"), ("header.tsv", "question\tanswer\n\n"),
    ("blank.json", "  \n"), ("empty.jsonl", ""), ("list.json", "[]"),
])
def test_empty_files(tmp_path, name, content):
    assert "is empty" in error_of(load_table, write(tmp_path / name, content))


def test_empty_parquet(tmp_path):
    path = str(tmp_path / "d.parquet")
    datasets.Dataset.from_dict({"question": [], "answer": []}).to_parquet(path)
    assert "is empty" in error_of(load_table, path)


def test_duplicate_header_is_caught_before_pandas_renames_it(tmp_path):
    path = write(tmp_path / "d.csv", "question,question,answer\na,b,c\n")
    assert "'question'" in error_of(load_table, path)
    report = check_data(path)
    assert not report.ok and "more than once" in report.errors[0]


def test_cp1252_and_utf16_csv_are_read_transparently(tmp_path):
    text = "question,answer\ncafé?,crème brûlée – 5€\n"
    for i, encoding in enumerate(["cp1252", "utf-16", "utf-8-sig"]):
        ds = load_table(write(tmp_path / f"d{i}.csv", text, encoding))
        assert ds.to_list() == [{"question": "café?", "answer": "crème brûlée – 5€"}], encoding


def test_binary_file_gets_the_utf8_message(tmp_path):
    path = write(tmp_path / "d.csv", b"question,answer\n\x00\x81\x8d\x00,1\n")
    assert "isn't UTF-8 text" in error_of(load_table, path)


@pytest.mark.parametrize("content,expected", [
    ('question,answer\nok,1\n"never closed,2\nthird,3\n', "row 2 has a quote"),
    ("question,answer\nok,1\nthree,values,here\nfine,2\nx,y,z\n", "rows 2, 4 have more values"),
    ('question,answer\nok,1\n"bad "quote" inside",2\n', "broken at row 2"),
])
def test_broken_csv_names_the_row(tmp_path, content, expected):
    assert expected in error_of(load_table, write(tmp_path / "d.csv", content))


@pytest.mark.parametrize("content,expected", [
    ('{"question": "a"}\n{"question": "b",\n', "line 2 isn't valid JSON"),
    ('[{"question": "a"},\n {"question": }]', "near line 2"),
    ('{"question": "a"}\n[1, 2]\n', "line 2 isn't a JSON object"),
])
def test_broken_json_names_the_line(tmp_path, content, expected):
    assert expected in error_of(load_table, write(tmp_path / "d.jsonl", content))


def test_file_over_the_size_limit(tmp_path):
    path = write_format(tmp_path, "csv")
    message = error_of(load_table, path, max_bytes=20)
    assert "20 bytes limit" in message and "over" in message
    assert load_table(path, max_bytes=10_000).num_rows == 3


# ---------------------------------------------------------------- Hub and builtin sources

def test_hub_without_network_gives_a_one_line_message(monkeypatch):
    calls = []

    def offline(path, name=None, **kwargs):
        calls.append((path, name, kwargs.get("split")))
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    message = error_of(load_table, "openai/gsm8k:main", split="test")
    assert message == "Could not download dataset 'openai/gsm8k:main': no internet connection or the name is wrong."
    assert calls == [("openai/gsm8k", "main", "test")]
    assert check_data("openai/gsm8k").errors[0].startswith("Could not download")


@pytest.mark.skipif(not datasets.config.HF_HUB_OFFLINE, reason="would try the network")
def test_hub_offline_with_the_real_library():
    report = check_data("openai/gsm8k:main")
    assert report.errors == ["Could not download dataset 'openai/gsm8k:main': "
                             "no internet connection or the name is wrong."]


def test_hub_missing_config_lists_the_choices(monkeypatch):
    def needs_config(path, name=None, **kwargs):
        raise ValueError("Config name is missing.\nPlease pick one among the available configs: "
                         "['main', 'socratic']\nExample of usage:\n\t`load_dataset('openai/gsm8k', 'main')`")

    monkeypatch.setattr(datasets, "load_dataset", needs_config)
    message = error_of(load_table, "openai/gsm8k")
    assert "'openai/gsm8k:NAME'" in message and "main, socratic" in message


def test_hub_result_is_returned_with_text_columns(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *a, **k: datasets.Dataset.from_dict({"question": ["q"], "answer": [7]}))
    assert load_table("someone/tiny").to_list() == [{"question": "q", "answer": "7"}]


def test_builtin_arithmetic_is_correct_and_deterministic():
    ds = load_table("builtin:arithmetic?n=200&seed=3&max_operand=20&operations=+-*")
    assert ds.num_rows == 200 and ds.column_names == ["question", "answer", "answer_full"]
    seen_ops = set()
    for row in ds:
        expression = row["question"].removeprefix("What is ").removesuffix("?")
        assert str(eval(expression)) == row["answer"]  # noqa: S307 - generated digits and + - * only
        assert row["answer_full"] == f"{expression} = {row['answer']}"
        assert int(row["answer"]) >= 0
        assert all(0 <= int(x) <= 20 for x in expression.split()[::2])
        seen_ops.add(expression.split()[1])
    assert seen_ops == {"+", "-", "*"}
    assert ds.to_list() == arithmetic_dataset(200, seed=3, max_operand=20, operations="+-*").to_list()
    assert arithmetic_dataset(50, seed=4).to_list() != arithmetic_dataset(50, seed=5).to_list()
    assert load_table("builtin:arithmetic").num_rows == 1000


@pytest.mark.parametrize("source,expected", [
    ("builtin:arithmetic?operations=/", "+ - *"),
    ("builtin:arithmetic?n=ten", "whole number"),
    ("builtin:arithmetic?n=0", "between 1 and"),
    ("builtin:arithmetic?colour=red", "Unknown option 'colour'"),
    ("builtin:poetry", "Unknown built-in dataset 'poetry'"),
])
def test_builtin_bad_options(source, expected):
    assert expected in error_of(load_table, source)


# ---------------------------------------------------------------- columns

@pytest.mark.parametrize("columns,expected", [
    (["question", "answer"], ("question", "answer", None)),
    (["Question", "Answer"], ("Question", "Answer", None)),
    ([" PROMPT ", "completion"], (" PROMPT ", "completion", None)),
    (["instruction", "output", "system_prompt"], ("instruction", "output", "system_prompt")),
    (["input", "question", "target"], ("question", "target", None)),  # name order beats column order
    (["question", "Question"], ("question", None, None)),  # exact case wins
    (["id", "User Question", "final_answer"], ("User Question", "final_answer", None)),
    (["System Prompt", "problem", "solution"], ("problem", "solution", "System Prompt")),
    (["system_prompt", "query"], ("query", None, "system_prompt")),
])
def test_detect_columns(columns, expected):
    assert detect_columns(columns) == ColumnMapping(*expected)


def test_detect_columns_failure_lists_columns_and_how_to_choose():
    message = error_of(detect_columns, ["id", "text", "label"])
    assert "id, text, label" in message and "choose" in message


def test_explicit_mapping_and_missing_column(tmp_path):
    path = write(tmp_path / "d.csv", "text,label,persona\nhi,1,be brief\n")
    report = check_data(path, question="text", answer="LABEL", system="persona")
    assert report.ok and report.mapping == ColumnMapping("text", "label", "persona")
    report = check_data(path, question="body")
    assert report.errors == ["Column 'body' not found; the file has columns: text, label, persona."]
    assert "Column 'reply' not found" in error_of(prepare_dataset, path, question="text", answer="reply")


# ---------------------------------------------------------------- answers

@pytest.mark.parametrize("text,expected", [
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
    ("#### 1,234", "1234"),
    ("so the total is 1,234,567 #### 1,234,567 ", "1234567"),
    ("pairs 1,2 #### 1,2", "1,2"),
    ("The answer is \\boxed{42}.", "42"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{1,000}", "1000"),
    ("  Paris \n", "Paris"),
    ("", ""),
    (None, None),
])
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text(), st.text(alphabet="#\\boxed{}0123456789, ")))
def test_extract_final_answer_never_raises(text):
    result = extract_final_answer(text)
    assert result is None if text is None else isinstance(result, str)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=20), st.sampled_from(["Question", " prompt ", "answer", "system"]))))
def test_detect_columns_maps_or_explains(columns):
    try:
        mapping = detect_columns(columns)
    except DataError as exc:
        assert "\n" not in str(exc)
        return
    chosen = [c for c in (mapping.question, mapping.answer, mapping.system) if c is not None]
    assert set(chosen) <= set(columns) and len(chosen) == len(set(chosen))


# ---------------------------------------------------------------- check_data

def test_empty_questions_are_errors_with_row_numbers(tmp_path):
    path = write(tmp_path / "d.csv", "question,answer\nq1,1\n,2\nq3,3\n   ,4\n")
    report = check_data(path)
    assert report.errors == ["Column 'question' is empty in rows 2, 4; every row needs a question."]
    assert "Problems found" in report.format()
    rows = "".join(f"{'' if i % 2 else 'q'},{i}\n" for i in range(1, 21))
    message = check_data(write(tmp_path / "many.csv", "question,answer\n" + rows)).errors[0]
    assert "rows 1, 3, 5, 7, 9 and 5 more" in message
    assert "rows 2, 4" in error_of(prepare_dataset, path)


def test_rows_without_answers_and_rewards(tmp_path):
    path = write(tmp_path / "d.csv", "question,answer\nq1,1\nq2,\nq3,#### \nq4,4\n")
    plain = check_data(path)
    assert plain.ok and plain.rows_without_answer == [2, 3] and plain.warnings == []
    assert plain.unusable_rewards == []
    report = check_data(path, rewards_needing_answer=["exact_match", "numeric"])
    assert report.ok and report.unusable_rewards == ["exact_match", "numeric"]
    assert any("rows 2, 3" in w and "exact_match" in w for w in report.warnings)
    assert "Rewards that can't be used: exact_match, numeric" in report.format()


def test_answer_column_entirely_empty_or_absent_is_a_warning(tmp_path):
    empty = check_data(write(tmp_path / "e.csv", "question,answer\nq1,\nq2,\n"), rewards_needing_answer=["exact"])
    assert empty.ok and empty.rows_without_answer == [1, 2] and empty.unusable_rewards == ["exact"]
    assert any("empty in every row" in w for w in empty.warnings)
    absent = check_data(write(tmp_path / "a.csv", "question\nq1\nq2\n"), rewards_needing_answer=["exact"])
    assert absent.ok and absent.mapping.answer is None and absent.unusable_rewards == ["exact"]
    assert any("No answer column" in w for w in absent.warnings)


def test_duplicate_and_long_questions_are_warnings(tmp_path):
    long_q = "x" * 4001
    path = write(tmp_path / "d.csv", f"question,answer\nsame,1\nother,2\nsame ,3\nsame,4\n{long_q},5\n")
    report = check_data(path)
    assert report.ok and report.num_rows == 5
    assert any(w.startswith("2 duplicate questions") and "rows 3, 4" in w for w in report.warnings)
    assert any("over 4000 characters" in w and "row 5" in w for w in report.warnings)
    text = report.format()
    assert "Rows: 5" in text and "Question column: question" in text and "OK" in text


def test_check_data_never_raises_for_bad_sources(tmp_path):
    for source in ["", str(tmp_path / "missing.json"), "builtin:nothing", write(tmp_path / "x.doc", "x")]:
        report = check_data(source)
        assert not report.ok and len(report.errors) == 1 and "\n" not in report.errors[0]


# ---------------------------------------------------------------- prepare_dataset

def test_prepare_dataset_columns_and_values(tmp_path):
    path = write(tmp_path / "d.csv", "Prompt,Solution,system\nAdd 1+1,1+1=2 #### 2,Be terse.\n"
                                     "Sum?,\"1,000 + 234 #### 1,234\",\nNo answer,,\n")
    ds = prepare_dataset(path, system_prompt="You are helpful.")
    assert ds.column_names == ["question", "answer", "answer_full", "system", "row"]
    assert ds.to_list() == [
        {"question": "Add 1+1", "answer": "2", "answer_full": "1+1=2 #### 2", "system": "Be terse.", "row": 1},
        {"question": "Sum?", "answer": "1234", "answer_full": "1,000 + 234 #### 1,234",
         "system": "You are helpful.", "row": 2},
        {"question": "No answer", "answer": None, "answer_full": None, "system": "You are helpful.", "row": 3},
    ]
    assert prepare_dataset(path, max_rows=2)["row"][:] == [1, 2]
    assert "row 3" in error_of(prepare_dataset, path, require_answer=True)
    assert prepare_dataset(path, max_rows=2, require_answer=True).num_rows == 2


@pytest.mark.parametrize("ext", ["json", "parquet"])
def test_prepare_dataset_other_formats_and_builtin(tmp_path, ext):
    ds = prepare_dataset(write_format(tmp_path, ext), system_prompt="S")
    assert ds["answer"][:] == ["4", "Paris", "42"] and set(ds["system"][:]) == {"S"}
    arith = prepare_dataset("builtin:arithmetic?n=5", require_answer=True)
    assert arith.num_rows == 5 and all(a.isdigit() for a in arith["answer"][:])


def test_prepare_dataset_without_answer_column(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"instruction": "Write a haiku"}\n')
    ds = prepare_dataset(path)
    assert ds.to_list() == [{"question": "Write a haiku", "answer": None, "answer_full": None,
                             "system": "", "row": 1}]
    assert "No answer column" in error_of(prepare_dataset, path, require_answer=True)
    assert "at least 1" in error_of(prepare_dataset, path, max_rows=0)


# ---------------------------------------------------------------- held-out split

def test_heldout_split_is_disjoint_stable_and_keeps_repeats_together():
    from core.data import heldout_questions, split_heldout

    ds = prepare_dataset("builtin:arithmetic?n=300&max_operand=9")  # 100 sums, many repeats
    distinct = set(ds["question"][:])
    train, held = split_heldout(ds, 0.3)
    assert held.num_rows == math.ceil(0.3 * len(distinct))  # 94 distinct here
    assert len(set(held["question"][:])) == held.num_rows          # one row per question
    assert not set(held["question"][:]) & set(train["question"][:])  # never trained on
    assert train.num_rows + sum(ds["question"][:].count(q) for q in held["question"][:]) == 300
    # chosen from the text alone: another order, another seed of the same questions agree
    shuffled = ds.shuffle(seed=5)
    assert set(split_heldout(shuffled, 0.3)[1]["question"][:]) == set(held["question"][:])
    assert heldout_questions(["a", "b"], 0.5) and not heldout_questions(["a"], 0.5)
    assert heldout_questions(list("abcdefghij"), 0) == set()
    assert len(heldout_questions(list("abc"), 0.5)) == 2  # rounds up, but one stays to train


def test_run_data_with_a_separate_eval_file(tmp_path):
    from core.config import DataConfig
    from core.data import prepare_run_data

    path = tmp_path / "eval.csv"
    path.write_text("question,answer\nWhat is 1 + 1?,2\nWhat is 1 + 1?,2\nWhat is 2 + 3?,5\n")
    train, held = prepare_run_data(DataConfig(source="builtin:arithmetic?n=40",
                                              eval_source=str(path)))
    assert train.num_rows == 40 and held["question"][:] == ["What is 1 + 1?", "What is 2 + 3?"]
    train, held = prepare_run_data(DataConfig(source="builtin:arithmetic?n=40", eval_share=0))
    assert train.num_rows == 40 and held is None


# ---------------------------------------------------------------- hostile and oversized tables

def wide_csv(path, columns, sep=","):
    header = sep.join(f"c{i}" for i in range(columns))
    return write(path, header + "\n" + sep.join("1" for _ in range(columns)) + "\n")


def timed(fn, *args, **kwargs):
    start = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - start


@pytest.mark.parametrize("name,sep", [("wide.csv", ","), ("wide.tsv", "\t")])
def test_a_table_with_100000_columns_is_refused_at_once(tmp_path, name, sep):
    path = wide_csv(tmp_path / name, 100_000, sep)
    expected = ("This table has 100000 columns; at most 1000 are supported. "
                "Is it really a table of questions?")
    report, seconds = timed(check_data, path)
    assert report.errors == [expected] and seconds < 5
    message, seconds = timed(error_of, load_table, path)
    assert message == expected and seconds < 5
    message, seconds = timed(error_of, prepare_dataset, path)
    assert message == expected and seconds < 5


def test_wide_json_and_parquet_are_refused_before_loading(tmp_path):
    row = {"question": "q", **{f"c{i}": i for i in range(100_000)}}
    jsonl = write(tmp_path / "wide.jsonl", json.dumps(row) + "\n")
    array = write(tmp_path / "wide.json", "[\n" + json.dumps(row) + "\n]")
    parquet = str(tmp_path / "wide.parquet")
    pq.write_table(pa.table({f"c{i}": [i] for i in range(1500)}), parquet)
    for path, columns in ((jsonl, 100_001), (array, 100_001), (parquet, 1500)):
        message, seconds = timed(error_of, load_table, path)
        assert message.startswith(f"This table has {columns} columns; at most 1000") and seconds < 5, path


def test_a_json_row_that_adds_columns_later_is_caught_after_loading(tmp_path):
    rows = [{"question": "q1"}, {"question": "q2", **{f"c{i}": "x" for i in range(1000)}}]
    path = write(tmp_path / "late.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert error_of(load_table, path).startswith("This table has 1001 columns; at most 1000")


def test_too_many_rows_are_refused(tmp_path):
    too_many = MAX_ROWS + 1
    csv_path = write(tmp_path / "long.csv", "question\n" + "q\n" * too_many)
    message, seconds = timed(error_of, load_table, csv_path)
    assert message == (f"This table has more than {MAX_ROWS} rows; at most {MAX_ROWS} are supported. "
                       "Use a smaller part of it.") and seconds < 20
    parquet = str(tmp_path / "long.parquet")
    pq.write_table(pa.table({"question": pa.array(["q"] * too_many)}), parquet)
    message, seconds = timed(error_of, load_table, parquet)
    assert message.startswith(f"This table has {too_many} rows; at most {MAX_ROWS}") and seconds < 5


def test_many_number_columns_load_as_text_quickly(tmp_path):
    # At the column limit; casting the columns one by one took minutes for a few hundred.
    rows = [{"question": f"q{j}", **{f"n{i}": i * j for i in range(MAX_COLUMNS - 2)}, "f": j / 2}
            for j in range(1, 4)]
    jsonl = write(tmp_path / "numbers.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    parquet = str(tmp_path / "numbers.parquet")
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    for path in (jsonl, parquet):
        ds, seconds = timed(load_table, path)
        assert seconds < 30 and len(ds.column_names) == MAX_COLUMNS, path
        assert ds[2]["n7"] == "21" and ds["f"][:] == ["0.5", "1", "1.5"], path


def test_values_arrow_cannot_cast_are_still_read_as_text(tmp_path):
    path = str(tmp_path / "mixed.parquet")
    pq.write_table(pa.table({"question": ["a", "b"], "n": [1, 2], "f": [2.0, 2.5], "b": [True, False],
                             "raw": pa.array([b"\xff", b"ok"], pa.binary())}), path)
    assert load_table(path).to_list() == [
        {"question": "a", "n": "1", "f": "2", "b": "true", "raw": "b'\\xff'"},
        {"question": "b", "n": "2", "f": "2.5", "b": "false", "raw": "b'ok'"},
    ]


def test_long_column_lists_are_cut_short_in_messages(tmp_path):
    path = wide_csv(tmp_path / "d.csv", 50)
    message = check_data(path).errors[0]
    assert "c0, c1," in message and "c19 and 30 more" in message and "c20" not in message
    message = check_data(path, question="body").errors[0]
    assert message == ("Column 'body' not found; the file has columns: "
                       + ", ".join(f"c{i}" for i in range(20)) + " and 30 more.")


def test_check_data_with_a_time_limit_gives_up_quickly(tmp_path):
    path = write(tmp_path / "big.csv", "question,answer\n"
                 + "".join(f"What is {i} + {i}?,{2 * i}\n" for i in range(200_000)))
    report, seconds = timed(check_data, path, time_limit=0.01)
    assert report.errors == ["Checking this data took longer than 0.01 s; "
                             "it is too big or too complex for this studio."]
    assert seconds < 3 and report.source == path and not report.columns


def test_check_data_with_a_time_limit_gives_the_same_report(tmp_path):
    path = write(tmp_path / "d.csv", "question,answer\nq1,1\n,2\nq1,\n")
    limited, plain = check_data(path, time_limit=120, rewards_needing_answer=["numeric_match"]), \
        check_data(path, rewards_needing_answer=["numeric_match"])
    assert limited == plain and limited.errors and limited.rows_without_answer == [3]
    report = check_data(wide_csv(tmp_path / "wide.csv", 100_000), time_limit=120)
    assert report.errors[0].startswith("This table has 100000 columns")


# ---------------------------------------------------------------- columns in other languages

@pytest.mark.parametrize("header, question, answer", [
    ("Frage,Antwort", "Frage", "Antwort"),
    ("Aufgabe;Lösung", "Aufgabe", "Lösung"),
    ("Question,Réponse", "Question", "Réponse"),
    ("Pregunta,Respuesta", "Pregunta", "Respuesta"),
    ("Enunciado,Solución", "Enunciado", "Solución"),
])
def test_columns_are_found_in_german_french_and_spanish(tmp_path, header, question, answer):
    sep = ";" if ";" in header else ","
    path = tmp_path / "d.csv"
    path.write_text(f"{header}\nWie viel ist 2 + 3?{sep}5\nWie viel ist 4 + 4?{sep}8\n",
                    encoding="utf-8")
    report = check_data(str(path))
    assert report.ok, report.errors
    assert (report.mapping.question, report.mapping.answer) == (question, answer)


@pytest.mark.parametrize("header, question, answer", [
    ("Frage,Begründung,Antwort", "Frage", "Antwort"),        # the plain answer wins
    ("Aufgabenstellung,Begründung,Quelle", "Aufgabenstellung", "Begründung"),
    ("Fragen,Lösungsweg,Quelle", "Fragen", "Lösungsweg"),
    ("Aufgabe,Musterlösung,Begründung", "Aufgabe", "Musterlösung"),
])
def test_german_worked_solutions_are_answers_when_nothing_better_is_there(tmp_path, header,
                                                                         question, answer):
    path = write(tmp_path / "d.csv", f"{header}\nWie viel ist 2 + 3?,Weil 2 + 3 = 5 ist: 5,Buch\n"
                 "Wie viel ist 4 + 4?,Weil 4 + 4 = 8 ist: 8,Heft\n")
    report = check_data(path)
    assert report.ok, report.errors
    assert (report.mapping.question, report.mapping.answer) == (question, answer)


def test_columns_are_found_by_their_contents(tmp_path):
    path = write(tmp_path / "d.csv", "Text,Zahl,Quelle\nWie viel ist 2 + 3?,5,Buch\n"
                 "Wie viel ist 4 + 4?,8,Heft\nUnd 10 - 7?,3,Buch\n")
    report = check_data(path, question="Text")
    assert report.mapping.answer == "Zahl"  # the one column of numbers
    # two columns, one chosen: the other is the other role
    two = write(tmp_path / "two.csv", "Satz,Kommentar\nSag hallo,hallo\nSag tschüss,tschüss\n")
    assert check_data(two, question="Satz").mapping.answer == "Kommentar"
    assert check_data(two, answer="Kommentar").mapping.question == "Satz"
