"""The HTTP side of the server: a LitServe spec with the OpenAI chat endpoint and the video-session endpoints.

    POST   /v1/chat/completions          OpenAI chat completions (images as `image_url` parts), `stream` as SSE
    POST   /v1/sessions                  open a video session -> {"id"}
    POST   /v1/sessions/{id}/frames      add one frame {"image": data URI}
    POST   /v1/sessions/{id}/text        {"text", "max_tokens", "temperature", "stream"} -> the answer
    DELETE /v1/sessions/{id}             close it
    GET    /v1/metrics, GET /v1/models   what the server holds; the model it serves

Bodies are checked and images decoded here (`serve.requests`), off the event loop; the model worker
gets plain request dicts through LitServe's request queue and answers with reply dicts (`serve.jobs`).
The first reply is read before a response starts, so every refusal is a 4xx with an OpenAI-style
`{"error": {...}}` body, never a broken stream.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem

from casa_adapter.serve import responses
from casa_adapter.serve.errors import ServeError
from casa_adapter.serve.requests import chat_request, frame_request, text_request
from casa_adapter.serve.settings import ServeSettings


class ServeSpec(LitSpec):
    """Endpoints of `casa-adapter serve`; see the module docstring."""

    def __init__(self, settings: ServeSettings, model_name: str):
        super().__init__()
        self.settings, self.model_name = settings, model_name
        self.api_path = "/v1"  # LitServe names the request queue (and the worker) after it
        self.add_endpoint("/v1/chat/completions", self.chat_completions, ["POST"])
        self.add_endpoint("/v1/sessions", self.create_session, ["POST"])
        self.add_endpoint("/v1/sessions/{session}/frames", self.add_frame, ["POST"])
        self.add_endpoint("/v1/sessions/{session}/text", self.add_text, ["POST"])
        self.add_endpoint("/v1/sessions/{session}", self.close_session, ["DELETE"])
        self.add_endpoint("/v1/metrics", self.metrics, ["GET"])
        self.add_endpoint("/v1/models", self.models, ["GET"])

    @property
    def stream(self) -> bool:
        return True

    def decode_request(self, request, context_kwargs=None):
        return request

    def encode_response(self, output, context_kwargs=None):
        return output

    # -- endpoints -------------------------------------------------------------------------
    async def chat_completions(self, request: Request):
        try:
            work = await asyncio.to_thread(chat_request, await self._body(request), self.settings)
            replies = await self._submit(work)
            cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
            if work["stream"]:
                return _sse(responses.chat_chunks(replies, cid, created, self.model_name))
            done = await _last(replies)
        except ServeError as error:
            return _error_response(error)
        return JSONResponse(responses.chat_completion(done, cid, created, self.model_name))

    async def create_session(self, request: Request):
        return await self._answer({"op": "create"})

    async def add_frame(self, session: str, request: Request):
        try:
            work = await asyncio.to_thread(frame_request, session, await self._body(request), self.settings)
        except ServeError as error:
            return _error_response(error)
        return await self._answer(work)

    async def add_text(self, session: str, request: Request):
        try:
            work = text_request(session, await self._body(request), self.settings)
            replies = await self._submit(work)
            if work["stream"]:
                return _sse(responses.session_events(replies))
            done = await _last(replies)
        except ServeError as error:
            return _error_response(error)
        return JSONResponse(responses.session_result(done))

    async def close_session(self, session: str, request: Request):
        return await self._answer({"op": "close", "session": session})

    async def metrics(self, request: Request):
        return await self._answer({"op": "metrics"})

    async def models(self, request: Request):
        return JSONResponse(
            {"object": "list", "data": [{"id": self.model_name, "object": "model", "owned_by": "casa_adapter"}]}
        )

    # -- plumbing --------------------------------------------------------------------------
    async def _body(self, request: Request):
        size = int(request.headers.get("content-length") or 0)
        most = self.settings.max_body_bytes
        if size > most:
            raise ServeError(413, f"request body of {size} bytes is larger than this server takes ({most})")
        try:
            return json.loads(await request.body())
        except ValueError as error:
            raise ServeError(400, f"the request body is not valid JSON ({error})") from error

    async def _submit(self, work: dict) -> AsyncIterator[dict]:
        """Send one request to the model worker; returns its replies, the first already read (a refusal is
        raised as `ServeError` here, before any response starts)."""
        uid = str(uuid.uuid4())
        queue, event = collections.deque(), asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event, response_queue=queue)
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), work))
        replies = self._replies(uid, queue, event)
        first = await anext(replies)
        if first["kind"] == "error":
            await replies.aclose()
            raise ServeError(first["status"], first["message"])
        return _prepend(first, replies)

    async def _replies(self, uid: str, queue: collections.deque, event: asyncio.Event) -> AsyncIterator[dict]:
        try:
            async for data, status in self.data_streamer(queue, event, send_status=True):
                if status == LitAPIStatus.ERROR:  # the worker's loop itself failed
                    yield {"kind": "error", "status": 500, "message": "the model worker failed (see the server log)"}
                    return
                yield json.loads(data)
        finally:
            self.response_buffer.pop(uid, None)

    async def _answer(self, work: dict):
        """A request answered by one "done" reply (create, frame, close, metrics) as JSON."""
        try:
            done = await _last(await self._submit(work))
        except ServeError as error:
            return _error_response(error)
        return JSONResponse(responses.session_result(done))


async def _prepend(first: dict, rest: AsyncIterator[dict]) -> AsyncIterator[dict]:
    yield first
    async for item in rest:
        yield item


async def _last(replies: AsyncIterator[dict]) -> dict:
    """The final reply (deltas skipped); a late error is raised."""
    last = None
    async for reply in replies:
        last = reply
    if last is None or last["kind"] == "error":
        raise ServeError(500, (last or {}).get("message", "the model worker sent no reply"))
    return last


def _sse(events: AsyncIterator[dict]) -> StreamingResponse:
    async def body():
        async for event in events:
            yield f"data: {json.dumps(event)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


def _error_response(error: ServeError) -> JSONResponse:
    return JSONResponse(responses.error_body(error.status, error.message), status_code=error.status)


__all__ = ["ServeSpec"]
