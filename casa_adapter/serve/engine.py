"""`ServeEngine`: every conversation the server holds, decoded together in one `StreamBatch`.

    engine = ServeEngine(model, tokenizer, ServeSettings())
    engine.submit("r1", {"op": "create"})
    engine.submit("r2", {"op": "chat", "messages": [...], "images": [...], "max_tokens": 16, ...})
    while engine.busy:
        for reply in engine.step():  # Reply(uid, {"kind": "delta" | "done" | "error", ...}, last)
            ...

Requests are the dicts `serve.requests` builds (ops "chat", "create", "frame", "text", "close",
"metrics"). A chat request runs in a temporary session, closed when it ends; a video session
("create") lives until "close" or `session_idle_s` without a call. One `step()` is one forward over
every session with queued input (new prompts, frames, the last generated tokens), then one new token
for every generating job: all sessions advance together, each with its own positions and window.

Refusals are replies with a 4xx: 404 unknown session, 409 a session already answering a call,
429 over `max_sessions` (over one session for a model whose sessions cannot share a batch:
sliding-window caches, `StreamBatch.solo`), 400 a prompt that would run past the model's positions, or past the
session's `max_cache_tokens` with `evict="error"`.
"""

from __future__ import annotations

import collections
import functools
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import torch

from casa_adapter.fusion.stream.limits import CacheLimitError, StreamLimits
from casa_adapter.processor import Processor
from casa_adapter.serve.errors import ServeError
from casa_adapter.serve.feeding import Budget, eos_ids, queue_prompt
from casa_adapter.serve.jobs import Job, Reply, TextStream, error_reply
from casa_adapter.serve.settings import ServeSettings

log = logging.getLogger(__name__)

RATE_WINDOW_S = 10.0
"""Generated tokens/s in the metrics are counted over this many seconds."""


@dataclass
class _Held:
    """An open video session."""

    session: Any
    last_used: float
    job: str | None = None
    """uid of the call it is answering (one at a time)."""
    frames: int = 0


class ServeEngine:
    """Sessions, jobs and the batched step of the server's model worker. See the module docstring."""

    def __init__(self, model, tokenizer, settings: ServeSettings | None = None):
        if tokenizer is None:
            raise ValueError("serving needs a tokenizer: the source holds none; pass one (`--tokenizer`)")
        self.model, self.tokenizer = model, tokenizer
        self.settings = settings or ServeSettings()
        self.limits = StreamLimits(self.settings.max_cache_tokens, self.settings.evict)
        try:
            self.streams = model.stream_batch(self.limits.max_cache_tokens, self.limits.evict)
        except ValueError as error:  # a limit this model's cache cannot keep: say which serve flag to change
            raise ValueError(f"{error} (`casa-adapter serve --evict error`)") from error
        self.capacity = self.settings.max_sessions if self.streams.solo is None else 1
        """Sessions held at once: `max_sessions`, or 1 where the model's sessions cannot share a batch."""
        if self.streams.solo is not None:
            log.warning("%s: the server holds one session at a time (429 beyond)", self.streams.solo)
        self.processor = Processor.from_model(model, tokenizer)
        self.budget = Budget(self.streams, self.limits, getattr(model.llm.config, "max_position_embeddings", None))
        self.eos = eos_ids(model, tokenizer)
        self.sessions: dict[str, _Held] = {}
        self.jobs: dict[str, Job] = {}
        self.replies: list[Reply] = []
        """Replies that need no step (create, close, metrics, refusals), sent with the next step's."""
        self.counters = {"steps": 0, "tokens": 0, "frames": 0, "requests": 0, "refused": 0}
        self.started = time.monotonic()
        self.recent: collections.deque[float] = collections.deque()
        """Times of the tokens generated in the last `RATE_WINDOW_S` seconds."""

    @property
    def busy(self) -> bool:
        """Something to do: jobs running or replies waiting."""
        return bool(self.jobs or self.replies)

    # -- requests --------------------------------------------------------------------------
    def submit(self, uid: str, request: dict) -> None:
        """Take one request; its replies come from the next `step()`s."""
        self.counters["requests"] += 1
        try:
            self._submit(uid, request)
        except ServeError as error:
            self.counters["refused"] += 1
            self.replies.append(error_reply(uid, error))

    def _submit(self, uid: str, request: dict) -> None:
        op = request.get("op")
        if op == "chat":
            return self._chat(uid, request)
        if op == "create":
            self._check_capacity()
            sid = uuid.uuid4().hex
            self.sessions[sid] = _Held(self.streams.open(), time.monotonic())
            return self._done(uid, {"id": sid, "object": "session"})
        if op == "metrics":
            return self._done(uid, self.metrics())
        held = self._held(request.get("session"))
        if op == "close":
            held.session.close()
            del self.sessions[request["session"]]
            return self._done(uid, {"id": request["session"], "object": "session", "deleted": True})
        if op == "frame":
            self.budget.feed(held.session, lambda: held.session.put_image(request["image"]), 0)
            held.frames += 1
            self.counters["frames"] += 1
            job = Job(uid, "frame", held.session, request["session"])
        elif op == "text":
            ids = self._encode(request["text"])
            if ids:
                self.budget.feed(held.session, lambda: held.session.put_text(ids), request["max_tokens"])
            elif held.session.last_logits is None:
                raise ServeError(400, "this session holds nothing yet: send a frame or some text first")
            job = self._generating(uid, "text", held.session, request, request["session"])
        else:
            raise ServeError(400, f"unknown op {op!r}")
        held.job = uid
        self.jobs[uid] = job

    def _chat(self, uid: str, request: dict) -> None:
        self._check_capacity()
        try:
            inputs = self.processor(request["messages"], request["images"] or None, add_generation_prompt=True)
        except ValueError as error:
            raise ServeError(400, f"messages: {error}") from error
        session = self.streams.open()
        try:
            put = functools.partial(queue_prompt, session, inputs, self.model.image_token_id)
            self.budget.feed(session, put, request["max_tokens"])
        except ServeError:
            session.close()
            raise
        self.jobs[uid] = self._generating(uid, "chat", session, request, None)

    def _generating(self, uid: str, op: str, session, request: dict, session_id: str | None) -> Job:
        return Job(
            uid,
            op,
            session,
            session_id,
            max_tokens=request["max_tokens"],
            temperature=request["temperature"],
            stream=request["stream"],
            text=TextStream(self.tokenizer),
            prompt_tokens=self.streams.queued_tokens(session),
        )

    # -- the step --------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> list[Reply]:
        """One forward over every queued input, then one token per generating job. Returns the replies."""
        self.expire_idle()
        replies, self.replies = self.replies, []
        if any(s.queue for s in self.streams.sessions):
            try:
                self.streams.step()
                self.counters["steps"] += 1
            except Exception:
                log.exception("the batched forward failed; its requests get a 500")
                fed = [uid for uid, job in self.jobs.items() if job.session.queue]
                for uid in fed:
                    replies.append(self._finish_failed(uid))
        for uid in list(self.jobs):
            replies.extend(self._advance(self.jobs[uid]))
        return replies

    def _advance(self, job: Job) -> list[Reply]:
        """The job's next token (or its result, once it has all of them)."""
        if job.op == "frame" or job.generated >= job.max_tokens:
            return [self._finish(job, "length")]
        token = job.session.next_token(job.temperature > 0, max(job.temperature, 1e-5))  # (1, 1)
        token_id = int(token)
        self.counters["tokens"] += 1
        self.recent.append(time.monotonic())
        if job.first_token_s is None:
            job.first_token_s = time.monotonic() - job.started
        if job.session_id is not None or token_id not in self.eos:
            try:
                job.session.put_text(token)  # a video session holds its answer, end-of-turn token included
            except CacheLimitError:  # the current window alone fills max_cache_tokens
                job.text.push(token_id)
                return [self._finish(job, "length")]
        if token_id in self.eos:
            job.text.ids.append(token_id)
            return [self._finish(job, "stop")]
        delta = job.text.push(token_id)
        out = [Reply(job.uid, {"kind": "delta", "text": delta})] if job.stream and delta else []
        if job.generated >= job.max_tokens:
            out.append(self._finish(job, "length"))
        return out

    def _finish(self, job: Job, reason: str) -> Reply:
        del self.jobs[job.uid]
        payload = {"kind": "done", "object": job.op}
        if job.text is not None:
            tail = job.text.flush()
            payload |= {
                "text": job.text.sent,
                "tail": tail,
                "finish_reason": reason,
                "usage": {
                    "prompt_tokens": job.prompt_tokens,
                    "completion_tokens": job.generated,
                    "total_tokens": job.prompt_tokens + job.generated,
                },
                "first_token_s": job.first_token_s,
            }
        if job.session_id is None:
            job.session.close()
        else:
            held = self.sessions[job.session_id]
            held.job, held.last_used = None, time.monotonic()
            payload |= self._session_state(job.session_id, held)
        return Reply(job.uid, payload, last=True)

    def _finish_failed(self, uid: str) -> Reply:
        job = self.jobs.pop(uid)
        if job.session_id is None:
            job.session.close()
        else:  # its state is unknown after a failed forward: it starts again
            job.session.reset()
            self.sessions[job.session_id].job = None
        return error_reply(uid, ServeError(500, "the model failed on this input (see the server log)"))

    # -- sessions --------------------------------------------------------------------------
    def _held(self, sid: Any) -> _Held:
        held = self.sessions.get(sid) if isinstance(sid, str) else None
        if held is None:
            raise ServeError(404, f"no session {sid!r} (closed, expired after session_idle_s, or never opened)")
        if held.job is not None:
            raise ServeError(409, f"session {sid} is still answering a call; wait for it before the next")
        held.last_used = time.monotonic()
        return held

    def _check_capacity(self) -> None:
        held = len(self.sessions) + sum(job.session_id is None for job in self.jobs.values())
        if held >= self.capacity and self.streams.solo is not None:
            raise ServeError(429, f"{self.streams.solo}: the server holds one session at a time; retry later")
        if held >= self.capacity:
            raise ServeError(429, f"the server holds max_sessions={self.settings.max_sessions} sessions; retry later")

    def expire_idle(self) -> None:
        """Close the video sessions untouched for `session_idle_s`."""
        cutoff = time.monotonic() - self.settings.session_idle_s
        for sid in [sid for sid, held in self.sessions.items() if held.job is None and held.last_used < cutoff]:
            self.sessions.pop(sid).session.close()
            log.info("session %s expired after %.0f s idle", sid, self.settings.session_idle_s)

    def _session_state(self, sid: str, held: _Held) -> dict:
        session = held.session
        return {
            "session": sid,
            "frames": held.frames,
            "positions": session.index + self.streams.queued_tokens(session),  # the last answer token may wait
            "cached_tokens": session.cached_tokens(),
            "state_bytes": session.state_bytes(),
        }

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _done(self, uid: str, payload: dict) -> None:
        self.replies.append(Reply(uid, {"kind": "done", **payload}, last=True))

    def metrics(self) -> dict:
        """What the server holds and has done (GET /v1/metrics); `tokens_per_s` over the last `RATE_WINDOW_S`."""
        now = time.monotonic()
        while self.recent and self.recent[0] < now - RATE_WINDOW_S:
            self.recent.popleft()
        return {
            "object": "metrics",
            "sessions": len(self.sessions),
            "chats": sum(job.session_id is None for job in self.jobs.values()),
            "jobs": len(self.jobs),
            "state_bytes": self.streams.state_bytes(),
            "tokens_per_s": round(len(self.recent) / min(RATE_WINDOW_S, max(now - self.started, 1e-3)), 2),
            "uptime_s": round(now - self.started, 3),
            **self.counters,
        }


__all__ = ["ServeEngine"]
