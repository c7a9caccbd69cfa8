"""Every handler's failure becomes one line for a beginner, never a traceback on the page."""
from __future__ import annotations

import functools
import inspect
import logging

from .i18n import t

log = logging.getLogger("studio")


# Errors whose message is already written for a beginner (matched by name: importing
# core.models here would pull torch into the UI process).
BEGINNER_ERRORS = {"ConfigError", "DataError", "ModelError", "RewardError", "JobError",
                   "AccessError"}


def say(exc: BaseException) -> str:
    """An error's one line in the page's language: core's settings errors carry a message id
    and its values (core.config.MESSAGES); settings are named by their label and a file by
    its name (the studio's upload folders mean nothing to the user). Any other error as it is."""
    msg_id = getattr(exc, "msg_id", None)
    if type(exc).__name__ != "ConfigError" or not msg_id:
        return str(exc)
    return said_text({"kind": "config", "id": msg_id, "params": exc.params}, str(exc))


def said_text(said: dict | None, english: str) -> str:
    """A message core wrote with its id and values ({"kind": "config" | "data", "id",
    "params"}: core.cli.said_of, in a failed run's events) in the page's language; `english`,
    core's own line, where there is none or it does not fit."""
    if not isinstance(said, dict) or said.get("kind") not in ("config", "data"):
        return english
    if said["kind"] == "data":
        from .step_data import message_text

        return message_text({"id": said.get("id"), "params": said.get("params") or {},
                             "text": english})
    from pathlib import Path

    from core.config import MESSAGES, render
    from core.messages import one_line

    from .i18n import catalog, core_template, current

    def named(key: str, value):
        if key in ("setting", "other") and isinstance(value, str):
            return catalog(current()).get(f"settings.{value}.label") or value
        if key == "name" and isinstance(value, str):
            return Path(value).name
        if isinstance(value, dict) and "id" in value:
            return {"id": value["id"],
                    "params": {k: named(k, v) for k, v in (value.get("params") or {}).items()}}
        return value

    try:
        params = said.get("params") or {}
        text = render(said["id"], {k: named(k, v) for k, v in params.items()},
                      core_template("config.msg.", MESSAGES))
    except (KeyError, IndexError, ValueError, TypeError, AttributeError):  # core's own line
        return english
    return one_line(text)  # as core's English: a setting's name from a file may hold breaks


def one_line(exc: BaseException) -> str:
    text = say(exc).strip().splitlines()
    if type(exc).__name__ in BEGINNER_ERRORS:
        return text[0] if text else type(exc).__name__
    if isinstance(exc, MemoryError):
        return t("errors.out_of_memory")
    if isinstance(exc, (OSError, ValueError)) and text:
        return f"{text[0][:300]}"
    return t("errors.unexpected", kind=type(exc).__name__,
             details=text[0][:200] if text else t("errors.no_details"))


def friendly(fn):
    """Wrap a Gradio handler: unexpected errors show as a short message (the log keeps the rest)."""
    import gradio as gr

    def report(exc: BaseException):
        if isinstance(exc, gr.Error):
            raise exc
        log.exception("handler %s failed", fn.__name__)
        raise gr.Error(one_line(exc), print_exception=False) from None

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                report(exc)
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            report(exc)
    return wrapper


def quietly(fn, outputs: int):
    """A timer's handler: a failure is logged and the tick changes nothing (the next tick tries
    again), instead of an error popping up every few seconds."""
    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception:
            log.exception("timer handler %s failed", fn.__name__)
            return [gr.skip()] * outputs
    return wrapper
