"""The command line as a user runs it: real subprocesses, real files."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def core(*args):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_data_check_good_file(tmp_path):
    f = tmp_path / "qa.csv"
    f.write_text("Problem,Solution\nWhat is 2+2?,Add them #### 4\nWhat is 3+3?,6\n")
    r = core("data", "check", str(f))
    assert r.returncode == 0, r.stderr
    assert "Problem" in r.stdout and "Solution" in r.stdout


def test_data_check_bad_file_is_one_line(tmp_path):
    f = tmp_path / "qa.csv"
    f.write_text("question,answer\nWhat is 2+2?,4\n,5\n")
    r = core("data", "check", str(f))
    assert r.returncode != 0
    error_lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "row" in error_lines[0] and "question" in error_lines[0]
    assert "Traceback" not in r.stderr + r.stdout


def test_data_check_missing_column_names_it(tmp_path):
    f = tmp_path / "qa.jsonl"
    f.write_text('{"q": "hi", "a": "there"}\n')
    r = core("data", "check", str(f), "--question", "prompt_text")
    assert r.returncode != 0
    assert "prompt_text" in r.stderr and "Traceback" not in r.stderr
