"""events.jsonl: the one channel from a training worker to whoever watches it.

One JSON object per line, each with `type` and `time`, flushed as written. Readers keep a byte
offset and only ever take complete lines, so a reader never sees half an event.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

EVENTS_FILE = "events.jsonl"


def write_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with `text` so that a reader sees the old file or the new one, never half
    of one: a temporary file of its own beside it (two writers never share one), then a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _clean(value):
    """Strict JSON: NaN and infinities become null, tensors and numpy scalars plain numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return _clean(value.item())
    return value


class EventLog:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / EVENTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        if _ends_torn(self.path):  # a writer was killed mid-line: never glue onto its half
            self._file.write("\n")
            self._file.flush()
        self.listeners: list = []  # called with each event once it is written (trackers)

    def emit(self, type: str, **fields) -> dict:
        event = {"type": type, "time": time.time(), **_clean(fields)}
        self._file.write(json.dumps(event, ensure_ascii=False, allow_nan=False) + "\n")
        self._file.flush()
        for listener in list(self.listeners):
            listener(event)
        return event

    def close(self) -> None:
        self._file.close()


def _ends_torn(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except OSError:
        return False


def read_events(run_dir: str | Path, offset: int = 0) -> tuple[list[dict], int]:
    """Complete events written since byte `offset`, and the offset to continue from."""
    path = Path(run_dir) / EVENTS_FILE
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
    events = []
    for line in data[:end].splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a torn line from a killed writer; skip it, keep reading
    return events, offset + end


PROGRESS_FILE = "progress.json"


class Progress:
    """What the worker is doing right now, within a step: one small file replaced atomically
    (the events log keeps only what happened). Writes are at most one per `every` seconds,
    except a change of phase, which is always written."""

    def __init__(self, run_dir: str | Path, every: float = 1.0):
        self.path = Path(run_dir) / PROGRESS_FILE
        self.every = every
        self.state: dict = {}
        self._written = 0.0

    def phase(self, phase: str, step: int, **fields) -> None:
        now = time.time()
        if self.state.get("step") != step:
            self.state = {"step": step, "step_started": now}
        self.state.update(phase=phase, phase_started=now, **fields)
        for gone in [k for k in self.state if k not in fields and k not in
                     ("step", "step_started", "phase", "phase_started")]:
            del self.state[gone]
        self._write(now)

    def update(self, **fields) -> None:
        """More detail on the current phase (tokens so far): written when `every` has passed."""
        self.state.update(fields)
        now = time.time()
        if now - self._written >= self.every:
            self._write(now)

    def clear(self) -> None:
        self.state = {}
        self.path.unlink(missing_ok=True)

    def _write(self, now: float) -> None:
        try:
            write_atomic(self.path, json.dumps(dict(self.state, time=now), allow_nan=False))
            self._written = now
        except (OSError, ValueError):
            pass  # a sign of life is never worth stopping a run for


PROGRESS_NUMBERS = ("step", "step_started", "phase_started", "time", "tokens", "of", "passes",
                    "done", "questions")


def read_progress(run_dir: str | Path) -> dict | None:
    """The worker's current phase, or None (no file, or one being replaced). Fields that should
    be numbers and are not are dropped."""
    try:
        data = json.loads((Path(run_dir) / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return {k: v for k, v in data.items() if k not in PROGRESS_NUMBERS
            or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))}
