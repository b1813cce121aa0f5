"""Chat messages in the forms users and datasets write them, normalised to `{"role", "content"}` strings.

Accepted: LLaVA `conversations` (`{"from": "human" | "gpt", "value"}`), HF `messages`
(`{"role", "content"}` with string content or content parts `{"type": "image"}` /
`{"type": "text", "text"}`), either as a bare list or inside a dict. Image parts become the image
placeholder. `casa_adapter.processor.Processor` renders the result with the tokenizer's chat template.

    >>> normalize_chat([{"from": "human", "value": "<image>\\nWhat is it?"}, {"from": "gpt", "value": "A cat."}])
    [{'role': 'user', 'content': '<image>\\nWhat is it?'}, {'role': 'assistant', 'content': 'A cat.'}]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

KEEP: Any = ...
"""`system_prompt` default: keep the chat's system message, or the template's default."""

Message = dict[str, str]
"""A normalised chat message: `{"role": "system" | "user" | "assistant", "content": str}`."""

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def normalize_chat(chat: Any, placeholder: str = "<image>", system_prompt: Any = KEEP) -> list[Message]:
    """LLaVA `{"conversations": [{"from", "value"}]}` or HF `{"messages": [{"role", "content"}]}`
    (or either bare list) -> role/content-string messages. `{"type": "image"}` content parts
    become `placeholder`; see `Processor` for `system_prompt`."""
    if isinstance(chat, dict):
        key = next((k for k in ("messages", "conversations") if k in chat), None)
        if key is None:
            raise ValueError(f"chat dict needs a 'messages' or 'conversations' key, got keys {sorted(chat)}")
        chat = chat[key]
    if isinstance(chat, (str, bytes)) or not isinstance(chat, Sequence):
        raise ValueError(f"chat must be a list of messages or a dict holding one, got {type(chat).__name__}")
    messages = [_normalize_message(m, k, placeholder) for k, m in enumerate(chat)]
    if system_prompt is None:
        messages = [m for m in messages if m["role"] != "system"]
    elif system_prompt is not KEEP and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": str(system_prompt)})
    return messages


def _normalize_message(message: Any, index: int, placeholder: str) -> Message:
    """One LLaVA or HF message -> `{"role", "content"}` with string content."""
    if not isinstance(message, dict):
        raise ValueError(f"chat message {index} must be a dict, got {type(message).__name__}")
    if "from" in message:
        role, content = message["from"], message.get("value", "")
    elif "role" in message:
        role, content = message["role"], message.get("content", "")
    else:
        raise ValueError(f"chat message {index} needs 'role'/'content' or 'from'/'value', got keys {sorted(message)}")
    if role not in _ROLES:
        raise ValueError(f"chat message {index} has unknown role {role!r}; known roles are {sorted(_ROLES)}")
    return {"role": _ROLES[role], "content": _content_text(content, index, placeholder)}


def _content_text(content: Any, index: int, placeholder: str) -> str:
    """A string, or HF content parts: images become `placeholder`, followed by a newline when
    text comes next (`[image, text "Q"]` == `"<image>\\nQ"`)."""
    if content is None or isinstance(content, str):
        return content or ""
    out: list[str] = []
    after_image = False
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("image", "text"):
            raise ValueError(
                f"chat message {index}: a content part must be {{'type': 'image'}} or "
                f"{{'type': 'text', 'text': ...}}, got {part!r}"
            )
        if kind == "text" and after_image:
            out.append("\n")
        out.append(placeholder if kind == "image" else part.get("text", ""))
        after_image = kind == "image"
    return "".join(out)


__all__ = ["KEEP", "Message", "normalize_chat"]
