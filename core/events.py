"""events.jsonl: the one channel from a training worker to whoever watches it.

One JSON object per line, each with `type` and `time`, flushed as written. Readers keep a byte
offset and only ever take complete lines, so a reader never sees half an event.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

EVENTS_FILE = "events.jsonl"


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
