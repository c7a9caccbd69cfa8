"""Errors that carry a message id and its values beside their English line.

Core words every problem a beginner can meet once, in English (each module's MESSAGES: id ->
text); the studio says the same message in the page's language from the id and the values
(`data.msg.<id>`, `config.msg.<id>` in its catalogs). Any other text is taken as it is.
"""
from __future__ import annotations

import re


def one_line(text: str) -> str:
    """A message on one line: line breaks (a name from a user's file may hold some) as spaces."""
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()


class MessageError(ValueError):
    """A problem worded for a beginner, always on one line.

    A subclass names its MESSAGES and its `render(msg_id, params)`; `Error("file_empty",
    name="x.csv")` then says that message, and keeps `msg_id` and `params` (through pickling
    too: a check in a child process gives them back)."""

    MESSAGES: dict[str, str] = {}

    @staticmethod
    def render(msg_id: str, params: dict) -> str:
        raise NotImplementedError

    def __init__(self, message: str, **params):
        self.msg_id = message if message in self.MESSAGES else None
        self.params = params if self.msg_id else {}
        text = self.render(message, params) if self.msg_id else str(message)
        super().__init__(one_line(text))

    def __reduce__(self):
        return _rebuild, (type(self), self.msg_id, self.params, str(self))


def _rebuild(cls: type[MessageError], msg_id: str | None, params: dict, text: str):
    return cls(msg_id, **params) if msg_id else cls(text)
