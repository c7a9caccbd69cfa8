"""The sandbox that runs code from completions and users (reward_templates/sandbox.py).

Every hostile snippet here must be contained: scored as a failure, nothing
written or reached outside the sandbox, no process left behind, and the test
process itself unharmed.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

import psutil
import pytest

from reward_templates import RewardError, RewardSet, get_template
from reward_templates.sandbox import TRUSTED_ENV, Limits, is_trusted, run_reward, run_tests, set_trusted


@pytest.fixture(autouse=True)
def trusted(monkeypatch):
    monkeypatch.setenv(TRUSTED_ENV, "1")
    set_trusted(None)
    yield
    set_trusted(None)


@pytest.fixture(autouse=True)
def no_leftover_processes():
    yield
    # Whatever ran inside must be gone once the call returns.
    deadline = time.monotonic() + 5
    while psutil.Process().children(recursive=True) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert psutil.Process().children(recursive=True) == []


def score(code: str, tests: str = "assert True", **params) -> float:
    return get_template("python_tests").score_one(code, tests, **params)


def test_passing_and_failing_code():
    outcomes = run_tests(
        [("def f(x):\n    return x + 1", "assert f(1) == 2\nassert f(2) == 4"), ("raise ValueError('no')", "assert True")]
    )
    assert (outcomes[0].ran, outcomes[0].passed, outcomes[0].total) == (True, 1, 2)
    assert "AssertionError" in outcomes[0].error
    assert not outcomes[1].ran and outcomes[1].error == "ValueError: no"


def test_infinite_loop_is_stopped():
    started = time.monotonic()
    assert score("while True:\n    pass", timeout_s=1.0) == 0.0
    assert score("import time\ntime.sleep(60)", timeout_s=1.0) == 0.0
    assert time.monotonic() - started < 10


def test_memory_bomb_is_contained():
    before = psutil.Process().memory_info().rss
    assert score("x = bytearray(10 ** 10)", memory_mb=256) == 0.0
    assert score("x = []\nwhile True:\n    x.append(bytearray(10 ** 7))", memory_mb=256, timeout_s=5) == 0.0
    assert psutil.Process().memory_info().rss - before < 200 * 2**20


def test_fork_is_blocked_bounded_version():
    # A harmless, bounded probe first: one fork whose child exits at once.
    code = "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)"
    outcome = run_tests([(code, "assert True")])[0]
    assert not outcome.ran and "os.fork" in outcome.error


def test_fork_bomb_is_contained():
    started = time.monotonic()
    assert score("import os\nwhile True:\n    os.fork()", timeout_s=2) == 0.0
    assert score("import multiprocessing\nwhile True:\n    multiprocessing.Process(target=print).start()", timeout_s=2) == 0.0
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    "code",
    [
        "import os\nos.system('echo hi')",
        "import subprocess\nsubprocess.run(['true'])",
        "import os\nos.execv('/bin/true', ['true'])",
        "import os\nos.posix_spawn('/bin/true', ['true'], {})",
        "import os\nos.spawnv(os.P_WAIT, '/bin/true', ['true'])",
        "import pty\npty.fork()",
        "import ctypes\nctypes.CDLL(None).fork()",
    ],
)
def test_process_creation_is_blocked(code):
    outcome = run_tests([(code, "assert True")])[0]
    assert not outcome.ran and "blocked in the sandbox" in outcome.error


def test_writes_outside_the_work_folder_are_blocked(tmp_path):
    target = tmp_path / f"probe-{uuid.uuid4().hex}"
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    attempts = [
        f"open({str(target)!r}, 'w').write('x')",
        f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)",
        f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
        f"import os\nos.remove({str(keep)!r})",
        f"import os\nos.rename({str(keep)!r}, 'stolen.txt')",
        f"import os\nos.symlink({str(keep)!r}, 'link')\nopen('link', 'w').write('x')",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
        f"import os\nfd = os.open({str(tmp_path)!r}, os.O_RDONLY)\nos.open('x', os.O_WRONLY | os.O_CREAT, dir_fd=fd)",
    ]
    for outcome in run_tests([(code, "assert True") for code in attempts]):
        assert not outcome.ran and "blocked in the sandbox" in outcome.error, outcome
    assert not target.exists()
    assert keep.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_writing_inside_the_work_folder_works():
    code = "with open('notes.txt', 'w') as f:\n    f.write('hi')\ndata = open('notes.txt').read()"
    assert score(code, "assert data == 'hi'") == 1.0


def test_network_is_blocked():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        attempts = [
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}))",
            f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/')",
            "import socket\nsocket.getaddrinfo('example.com', 80)",
        ]
        for outcome in run_tests([(code, "assert True") for code in attempts]):
            assert not outcome.ran, outcome
        with pytest.raises(socket.timeout):
            server.accept()  # nobody connected
    finally:
        server.close()


def test_the_server_process_cannot_be_signalled_or_limits_raised():
    attempts = [
        f"import os, signal\nos.kill({os.getpid()}, 0)",
        "import os\nos.kill(os.getppid(), 0)",
        "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
        "def f(): pass\ndef g(): return 1\nf.__code__ = g.__code__",
    ]
    for outcome in run_tests([(code, "assert True") for code in attempts]):
        assert not outcome.ran and "blocked in the sandbox" in outcome.error, outcome


def test_early_exit_does_not_count_as_passing():
    assert score("import os\nos._exit(0)") == 0.0
    assert score("raise SystemExit(0)") == 0.0
    assert score("print('{\"ran\": true, \"passed\": 1, \"total\": 1}')\nimport os\nos._exit(0)") == 0.0


def test_one_bad_completion_does_not_spoil_the_batch():
    spec = get_template("python_tests")
    params = spec.validate_params({"timeout_s": 1.0})
    codes = ["def f(): return 1", "while True: pass", "import os\nos.fork()", "def f(): return 2"]
    got = spec.fn([""] * 4, codes, ["assert f() == 1"] * 4, **params)
    assert got == [1.0, 0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------
# Custom rewards
# ---------------------------------------------------------------------------


def test_custom_reward_runs_the_batch_in_one_process():
    values, problem = run_reward(
        "import os\ndef reward(prompt, completion, answer):\n    return float(os.getpid())",
        [("p", "a", None), ("p", "b", "x"), ("p", "c", None)],
    )
    assert problem == "" and len(set(values)) == 1 and values[0] != float(os.getpid())


def test_custom_reward_errors_become_one_line_messages():
    rs = RewardSet.from_config([{"template": "custom_python", "params": {"code": "return 1 / len(completion)"}}])
    totals, per_term = rs.score(None, ["ab", "", "abcd"], None)
    assert per_term["custom_python"] == [0.5, None, 0.25]
    assert len(rs.last_errors) == 1 and "\n" not in rs.last_errors[0]
    assert "row 2" in rs.last_errors[0] and "ZeroDivisionError" in rs.last_errors[0]


@pytest.mark.parametrize(
    "code,fragment",
    [
        ("return float('nan')", "not a finite number"),
        ("return [1]", "expected a number or None"),
        ("import os\nos.fork()", "blocked in the sandbox"),
        ("def helper(): pass", "failed to load"),
    ],
)
def test_custom_reward_bad_results(code, fragment):
    values, problem = run_reward(
        code if code.startswith("def helper") else "def reward(prompt, completion, answer):\n    " + code.replace("\n", "\n    "),
        [("p", "c", None)],
        Limits(timeout_s=1.0, cpu_s=1),
    )
    assert values == [None] and fragment in problem and "\n" not in problem


@pytest.mark.parametrize(
    "timeout_s,cpu_s,fragment",
    [
        (1.0, 30, "took longer than 1 s"),  # the wall-clock limit comes first
        (30.0, 1, "ran out of CPU time"),  # the CPU-time limit comes first
    ],
)
def test_custom_reward_endless_loop_is_stopped(timeout_s, cpu_s, fragment):
    values, problem = run_reward(
        "def reward(prompt, completion, answer):\n    while True:\n        pass",
        [("p", "c", None)],
        Limits(timeout_s=timeout_s, cpu_s=cpu_s),
    )
    assert values == [None] and fragment in problem and "\n" not in problem


def test_custom_reward_syntax_error_is_reported_when_set_up():
    with pytest.raises(RewardError) as err:
        RewardSet.from_config([{"template": "custom_python", "params": {"code": "return (1 +"}}])
    msg = str(err.value)
    assert "syntax error" in msg and "\n" not in msg


# ---------------------------------------------------------------------------
# Trusted mode
# ---------------------------------------------------------------------------


def test_trusted_mode_is_off_by_default(monkeypatch):
    monkeypatch.delenv(TRUSTED_ENV, raising=False)
    assert not is_trusted()
    set_trusted(True)
    assert is_trusted()
    set_trusted(False)
    monkeypatch.setenv(TRUSTED_ENV, "1")
    assert not is_trusted()  # the explicit switch wins over the environment


@pytest.mark.parametrize("name", ["python_tests", "custom_python"])
def test_code_templates_refuse_to_run_outside_trusted_mode(monkeypatch, name):
    monkeypatch.delenv(TRUSTED_ENV, raising=False)
    with pytest.raises(RewardError) as err:
        RewardSet.from_config([{"template": name}])
    msg = str(err.value)
    assert "trusted mode" in msg and TRUSTED_ENV in msg and "\n" not in msg
    # A set built while trusted stops running code once trust is withdrawn.
    set_trusted(True)
    rs = RewardSet.from_config([{"template": name}])
    set_trusted(False)
    totals, per_term = rs.score(None, ["def f(): return 1"], ["assert f() == 1"])
    assert per_term == {name: [None]} and totals == [0.0]
    assert len(rs.last_errors) == 1 and "trusted mode" in rs.last_errors[0]
