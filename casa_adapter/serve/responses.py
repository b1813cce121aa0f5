"""Reply dicts from the model worker -> the JSON the endpoints send (OpenAI shapes for chat).

- `chat_completion`: a `chat.completion` object; `chat_chunks`: its `chat.completion.chunk` stream (a
  first chunk with the role, one per text delta, a last one with `finish_reason` and `usage`);
- `session_result` / `session_events`: the video-session calls' results and their event stream;
- `error_body`: `{"error": {"message", "type", "code"}}`, as OpenAI clients expect.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

_TYPES = {400: "invalid_request_error", 404: "not_found_error", 409: "conflict_error", 413: "request_too_large"}


def error_body(status: int, message: str) -> dict:
    kind = _TYPES.get(status, "rate_limit_error" if status == 429 else "server_error")
    return {"error": {"message": message, "type": kind, "code": status}}


def chat_completion(done: dict, cid: str, created: int, model: str) -> dict:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": done["text"]},
                "finish_reason": done["finish_reason"],
            }
        ],
        "usage": done["usage"],
    }


async def chat_chunks(replies: AsyncIterator[dict], cid: str, created: int, model: str) -> AsyncIterator[dict]:
    def chunk(delta: dict, finish_reason=None) -> dict:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}

    yield chunk({"role": "assistant", "content": ""})
    async for reply in replies:
        if reply["kind"] == "delta":
            yield chunk({"content": reply["text"]})
        elif reply["kind"] == "done":
            if reply["tail"]:
                yield chunk({"content": reply["tail"]})
            yield chunk({}, reply["finish_reason"]) | {"usage": reply["usage"]}
        else:
            yield error_body(reply["status"], reply["message"])


def session_result(done: dict) -> dict:
    """A "done" reply without its envelope fields."""
    return {k: v for k, v in done.items() if k not in ("kind", "tail")}


async def session_events(replies: AsyncIterator[dict]) -> AsyncIterator[dict]:
    """{"text": delta} events, then the call's result (or an error body)."""
    async for reply in replies:
        if reply["kind"] == "delta":
            yield {"text": reply["text"]}
        elif reply["kind"] == "done":
            if reply["tail"]:
                yield {"text": reply["tail"]}
            yield session_result(reply)
        else:
            yield error_body(reply["status"], reply["message"])


__all__ = ["chat_chunks", "chat_completion", "error_body", "session_events", "session_result"]
