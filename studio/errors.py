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


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
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
