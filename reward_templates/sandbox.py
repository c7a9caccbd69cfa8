"""Run Python code from completions or users in a separate, limited process.

Code runs only in *trusted mode* (a local, single-user studio): switch it on
with the environment variable ``AHA_STUDIO_TRUSTED=1`` or :func:`set_trusted`.
It is off by default, and templates that run code refuse to be set up
without it.

Each call starts one fresh ``python -I -S`` process (standard library only)
in its own session, inside an empty temporary folder that is deleted
afterwards. That process limits its memory, file sizes and open files, then
forks one worker per unit of work (one per completion for tests, one per
batch for a custom reward). Before any given code runs, a worker installs an
audit hook that refuses to start processes (fork, exec, spawn, system,
subprocess), open sockets, load ctypes, signal other processes, raise its own
limits, or write outside the temporary folder; a CPU-time limit and a
wall-clock timeout end runaway code, and the whole process group is killed
when the call ends.

The hook stops accidental and casual harm (an infinite loop, a memory or fork
bomb, deleting files, calling the network). It is not a security boundary
against code written to escape it, which is why code runs only in trusted
mode.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .base import RewardError

__all__ = ["TRUSTED_ENV", "Limits", "set_trusted", "is_trusted", "require_trusted", "run_tests", "run_reward"]

TRUSTED_ENV = "AHA_STUDIO_TRUSTED"
_CHILD = str(Path(__file__).with_name("_sandbox_child.py"))
_override: bool | None = None
# Extra seconds on top of the work's own time limits for starting Python.
_START_SLACK_S = 10.0
_MAX_UNITS = 4096


def set_trusted(flag: bool | None) -> None:
    """Switch trusted mode on or off for this process; None goes back to the environment variable."""
    global _override
    _override = None if flag is None else bool(flag)


def is_trusted() -> bool:
    """Whether code may run: :func:`set_trusted`, else ``AHA_STUDIO_TRUSTED`` (off by default)."""
    if _override is not None:
        return _override
    return os.environ.get(TRUSTED_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def require_trusted(label: str) -> None:
    """Raise a one-line RewardError unless trusted mode is on."""
    if not is_trusted():
        raise RewardError(
            f"{label} runs Python code, so it works only when the studio runs in trusted mode "
            f"(on your own computer: start it with {TRUSTED_ENV}=1)."
        )


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandbox call (times are per worker)."""

    timeout_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 512
    file_mb: int = 8
    open_files: int = 64
    max_writes: int = 50


def _run(mode: str, units: list[dict], limits: Limits) -> list[dict]:
    """Run ``units`` in one sandbox process; one ``{"results", "stop"}`` entry per unit.

    A sandbox that cannot start or dies gives entries with an empty result
    list and the reason in ``stop``.
    """
    if not units:
        return []
    units = units[:_MAX_UNITS]
    tmpdir = tempfile.mkdtemp(prefix="aha-sandbox-")
    job = {"mode": mode, "units": units, "limits": asdict(limits), "nonce": secrets.token_hex(16), "tmpdir": tmpdir}
    env = {"PATH": "/usr/bin:/bin", "HOME": tmpdir, "TMPDIR": tmpdir, "LANG": "C.UTF-8"}
    overall = len(units) * (limits.timeout_s + 1.0) + _START_SLACK_S
    proc = None
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=tmpdir,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        out, err = proc.communicate(json.dumps(job).encode("utf-8"), timeout=overall)
        if proc.returncode != 0:
            last = (err.decode("utf-8", "replace").strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            return _failed(units, f"the sandbox stopped early ({last[:160]})")
        report = json.loads(out.decode("utf-8"))["units"]
        if len(report) != len(units):
            return _failed(units, "the sandbox returned an incomplete report")
        return report
    except subprocess.TimeoutExpired:
        return _failed(units, f"the sandbox took longer than {overall:g} s and was stopped")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return _failed(units, f"the sandbox could not run ({type(exc).__name__}: {str(exc)[:120]})")
    finally:
        if proc is not None:
            _kill_group(proc)
        shutil.rmtree(tmpdir, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.communicate(timeout=5)
    except Exception:
        pass


def _failed(units: list[dict], reason: str) -> list[dict]:
    return [{"results": [], "stop": reason} for _ in units]


@dataclass
class CodeOutcome:
    """How one completion's code did against its tests."""

    ran: bool
    passed: int
    total: int
    error: str


def run_tests(items: list[tuple[str, str]], limits: Limits = Limits()) -> list[CodeOutcome]:
    """Run each ``(code, tests)`` pair in its own worker: the code, then each test statement."""
    units = [{"code": code, "tests": tests} for code, tests in items]
    outcomes = []
    for entry in _run("tests", units, limits):
        results = entry.get("results") or []
        if results and isinstance(results[0], dict):
            r = results[0]
            outcomes.append(
                CodeOutcome(bool(r.get("ran")), int(r.get("passed", 0)), int(r.get("total", 0)), str(r.get("error", "")))
            )
        else:
            outcomes.append(CodeOutcome(False, 0, 0, entry.get("stop") or "the code produced no result"))
    return outcomes


def run_reward(source: str, rows: list[tuple[str, str, str | None]], limits: Limits = Limits()) -> tuple[list[float | None], str]:
    """Call ``reward(prompt, completion, answer)`` from ``source`` on every row, in one worker.

    Returns one value per row (None where it failed) and the first problem
    as one line ("" when there was none).
    """
    if not rows:
        return [], ""
    entries = _run("reward", [{"source": source, "rows": [list(r) for r in rows]}], limits)
    entry = entries[0] if entries else {"results": [], "stop": "the sandbox returned nothing"}
    results = [r for r in entry.get("results") or [] if isinstance(r, dict)]
    if results and "fatal" in results[0]:
        return [None] * len(rows), f"your reward code failed to load: {results[0]['fatal']}"
    values: list[float | None] = []
    problem = ""
    for r in results[: len(rows)]:
        if "error" in r:
            values.append(None)
            problem = problem or f"row {len(values)}: {r['error']}"
        else:
            v = r.get("value")
            values.append(float(v) if isinstance(v, (int, float)) else None)
    if len(values) < len(rows):
        stop = entry.get("stop") or "it ended early"
        problem = problem or f"row {len(values) + 1}: your reward code {stop}"
        values.extend([None] * (len(rows) - len(values)))
    return values, problem
