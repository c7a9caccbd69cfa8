"""The wizard as the user left it: every field, the reward set and the step sliders, kept in
the user's own folder so that a reload, another tab or a restart of the server brings it back.

One small JSON file per user (`draft.json` in their home), written whenever a field changes and
read when a page opens. Only the names the page offers are read back, each value only if it has
a plain JSON type, so a damaged or hand-edited file can at worst be ignored.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from core.events import write_atomic

DRAFT_FILE = "draft.json"
MAX_DRAFT_BYTES = 256 * 1024  # a form's worth; anything bigger is not ours
VERSION = 1


def _plain(value):
    """The value if it is plain JSON (finite numbers, short text, lists of those), else None."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) and abs(value) < 2 ** 53 else None
    if isinstance(value, str):
        return value if len(value) <= 20_000 else None
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value[:200]]
        return items if all(i is not None or v is None for i, v in zip(items, value)) else None
    if isinstance(value, dict):
        out = {}
        for k, v in list(value.items())[:200]:
            clean = _plain(v)
            if clean is not None or v is None:
                out[str(k)[:200]] = clean
        return out
    return None


def save_draft(home: Path, fields: dict, rewards: list) -> None:
    """Write the draft atomically (a reader never sees half a file)."""
    data = {"version": VERSION, "fields": {k: _plain(v) for k, v in fields.items()},
            "rewards": [_plain(r) for r in (rewards or []) if isinstance(r, dict)]}
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    if len(text) > MAX_DRAFT_BYTES:
        return  # never happens from the page; a draft that big is not worth keeping
    home.mkdir(parents=True, exist_ok=True)
    write_atomic(home / DRAFT_FILE, text)  # two tabs saving at once never share a file


def load_draft(home: Path, names: list[str]) -> tuple[dict, list] | None:
    """(field values by name, rewards) of the user's draft, only for the names given; None when
    there is no usable draft."""
    path = home / DRAFT_FILE
    try:
        if path.stat().st_size > MAX_DRAFT_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return None
    stored = data.get("fields") if isinstance(data.get("fields"), dict) else {}
    fields = {name: _plain(stored[name]) for name in names if name in stored}
    rewards = [r for r in data.get("rewards") or [] if isinstance(r, dict)
               and isinstance(r.get("template"), str)]
    return fields, [_plain(r) for r in rewards]


def clear_draft(home: Path) -> None:
    (home / DRAFT_FILE).unlink(missing_ok=True)
