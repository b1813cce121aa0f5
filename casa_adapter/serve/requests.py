"""Request bodies -> what the model's worker runs. Checked here, in the HTTP process: shape, counts, images.

- `chat_request(body)`: an OpenAI `/v1/chat/completions` body -> {"op": "chat", "messages", "images",
  "max_tokens", "temperature", "stream"}; `image_url` parts become `{"type": "image"}` parts, their
  images decoded in order.
- `frame_request`, `text_request`: the video-session calls.

Anything wrong is a `ServeError` with its 4xx status and the field it is about.
"""

from __future__ import annotations

from typing import Any

from casa_adapter.serve.errors import ServeError
from casa_adapter.serve.images import decode_image_url
from casa_adapter.serve.settings import ServeSettings


def _object(body: Any, what: str) -> dict:
    if not isinstance(body, dict):
        raise ServeError(400, f"{what}: the request body must be a JSON object")
    return body


def generation_options(body: dict, settings: ServeSettings) -> dict:
    """`max_tokens` (or `max_completion_tokens`) and `temperature`, checked against the limits."""
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    max_tokens = settings.default_max_tokens if max_tokens is None else max_tokens
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 0 <= max_tokens <= settings.max_tokens:
        raise ServeError(400, f"max_tokens must be an integer from 0 to {settings.max_tokens}, got {max_tokens!r}")
    temperature = body.get("temperature", 0.0)
    if temperature is None:
        temperature = 0.0
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
        raise ServeError(400, f"temperature must be a number from 0 to 2, got {temperature!r}")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ServeError(400, f"stream must be true or false, got {stream!r}")
    return {"max_tokens": max_tokens, "temperature": float(temperature), "stream": stream}


def chat_request(body: Any, settings: ServeSettings) -> dict:
    body = _object(body, "chat completion")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ServeError(400, "messages must be a non-empty list")
    if body.get("n", 1) != 1:
        raise ServeError(400, "n must be 1 (one choice per request)")
    out_messages, images = [], []
    for k, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise ServeError(400, f"messages[{k}] must be an object with a role and a content")
        content = message.get("content")
        if isinstance(content, list):
            content = [_part(part, f"messages[{k}].content[{j}]", images, settings) for j, part in enumerate(content)]
        elif content is not None and not isinstance(content, str):
            raise ServeError(400, f"messages[{k}].content must be a string or a list of parts")
        out_messages.append({"role": message["role"], "content": content or ""})
    return {"op": "chat", "messages": out_messages, "images": images, **generation_options(body, settings)}


def _part(part: Any, where: str, images: list, settings: ServeSettings) -> dict:
    if not isinstance(part, dict) or "type" not in part:
        raise ServeError(400, f"{where} must be an object with a type")
    if part["type"] == "text":
        if not isinstance(part.get("text"), str):
            raise ServeError(400, f"{where}.text must be a string")
        return {"type": "text", "text": part["text"]}
    if part["type"] == "image_url":
        if len(images) >= settings.max_images:
            raise ServeError(400, f"too many images: this server takes at most max_images={settings.max_images}")
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        images.append(decode_image_url(url, settings, where))
        return {"type": "image"}
    raise ServeError(400, f"{where}: part type {part['type']!r} is not supported (text, image_url)")


def frame_request(session: str, body: Any, settings: ServeSettings) -> dict:
    """{"image": data URI} (or {"image_url": {"url": ...}}) -> one frame for a session."""
    body = _object(body, "frame")
    url = body.get("image", body.get("image_url"))
    url = url.get("url") if isinstance(url, dict) else url
    return {"op": "frame", "session": session, "image": decode_image_url(url, settings, "frame")}


def text_request(session: str, body: Any, settings: ServeSettings) -> dict:
    """{"text": str, "max_tokens": n, "temperature": t, "stream": bool} -> text for a session, then n new tokens."""
    body = _object(body, "text")
    if not isinstance(body.get("text", ""), str):
        raise ServeError(400, "text must be a string")
    options = generation_options({"max_tokens": 0, **body}, settings)
    if not body.get("text") and options["max_tokens"] == 0:
        raise ServeError(400, "give some text, or max_tokens > 0 to continue the session")
    return {"op": "text", "session": session, "text": body.get("text", ""), **options}


__all__ = ["chat_request", "frame_request", "text_request", "generation_options"]
