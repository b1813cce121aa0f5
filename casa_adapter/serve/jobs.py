"""What the engine tracks per request: a `Job` (one request being answered) and `TextStream` (its text so far).

Every reply the engine sends is a `Reply(uid, payload, last)`: payloads are JSON-ready dicts with a
`kind` of "delta" (new text of a generation), "done" (the result) or "error" (`status`, `message`);
`last` marks the request's final reply.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from casa_adapter.serve.errors import ServeError


@dataclass
class Reply:
    """One message back to the HTTP side for request `uid`."""

    uid: str
    payload: dict
    """{"kind": "delta" | "done" | "error", ...}."""
    last: bool = False
    """The request's final reply (its "done" or "error")."""


def error_reply(uid: str, error: ServeError) -> Reply:
    return Reply(uid, {"kind": "error", "status": error.status, "message": error.message}, last=True)


class TextStream:
    """Incremental detokenization: the text of all ids so far, released only once it is whole (a token that
    ends inside a multi-byte character decodes to U+FFFD until the next one completes it)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""
        """The text released so far."""

    def push(self, token_id: int) -> str:
        """Add one id; returns the text it completes ("" while a character is still incomplete)."""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        new, self.sent = text[len(self.sent) :], text
        return new

    def flush(self) -> str:
        """What is still held back at the end (an incomplete character, as the tokenizer renders it)."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        new, self.sent = text[len(self.sent) :], text
        return new


@dataclass
class Job:
    """A request in progress: a frame waiting for its step, or text to feed and tokens to generate."""

    uid: str
    op: str
    """"chat" (a temporary session), "frame" or "text" (a video session's call)."""
    session: Any
    """The `StreamSession` the job feeds and continues."""
    session_id: str | None
    """The video session's id (None for chat)."""
    max_tokens: int = 0
    temperature: float = 0.0
    stream: bool = False
    """Send "delta" replies as text comes (otherwise only the final "done")."""
    text: TextStream | None = None
    prompt_tokens: int = 0
    """Positions the request fed before generating (an image counts as the positions it takes)."""
    started: float = field(default_factory=time.monotonic)
    first_token_s: float | None = None
    """Seconds from arrival to the first generated token."""

    @property
    def generated(self) -> int:
        return 0 if self.text is None else len(self.text.ids)


__all__ = ["Job", "Reply", "TextStream", "error_reply"]
