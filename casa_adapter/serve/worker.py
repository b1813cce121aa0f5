"""The model side of the server: a LitServe `LitAPI` whose continuous-batching loop drives one `ServeEngine`.

LitServe runs this in its inference worker process. Requests arrive through `add_request` (on the loop's
event-loop thread: they are only put in an inbox), and every `step` (on one worker thread) takes the
inbox into the engine, runs the engine's batched step, and returns its replies as LitServe `Output`s:
each reply is sent as it is, and a request's last reply is followed by `FINISH_STREAMING`. All model
work happens on that one thread.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass

import litserve as ls
import torch
from litserve.loops.continuous_batching_loop import ContinuousBatchingLoop, Output
from litserve.utils import LitAPIStatus, LoopResponseType

from casa_adapter.serve.engine import ServeEngine
from casa_adapter.serve.settings import ServeSettings
from casa_adapter.serve.spec import ServeSpec

log = logging.getLogger(__name__)

IDLE_SLEEP_S = 0.002
"""How long the loop sleeps when nothing is running (LitServe's own loop would spin at full speed)."""


@dataclass
class ModelSource:
    """What the worker loads: anything `casa-adapter export` reads (an adapter directory, a `save_pretrained`
    folder, a `.ckpt`), on its recorded base or `base`. Picklable: it travels to the worker process."""

    source: str
    base: str | None = None
    """A base model name or folder that replaces the recorded one."""
    tokenizer: str | None = None
    """A tokenizer folder, when the source holds none."""
    dtype: str | None = None
    """"float32", "bfloat16" or "float16"; None keeps the loaded dtype."""

    def load(self):
        """(model in eval mode, tokenizer)."""
        from casa_adapter.export.sources import load_source

        model, tokenizer = load_source(self.source, base=self.base)
        if self.tokenizer is not None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.tokenizer)
        if self.dtype is not None:
            model = model.to(getattr(torch, self.dtype))
        return model.eval(), tokenizer


class EngineLoop(ContinuousBatchingLoop):
    """LitServe's continuous-batching loop, run back to back while the engine is busy (LitServe's own `run`
    sleeps 10 ms after a step without replies, a non-streamed generation's usual step) and asleep while idle
    (LitServe's would spin); idle video sessions are closed meanwhile."""

    async def run(self, lit_api, device, worker_id, request_queue, transport, *args, **kwargs):
        if not lit_api.has_active_requests():
            await asyncio.sleep(IDLE_SLEEP_S)
            lit_api.idle()
            return
        try:
            while lit_api.has_active_requests():
                for output in await asyncio.to_thread(lit_api.step, None):
                    self._send(lit_api, transport, output)
        except Exception as error:  # a bug, not a refused request: every open request gets a 500
            log.exception("the serving loop failed")
            for uid, queue_id in self.response_queue_ids.items():
                self.put_error_response(transport, queue_id, uid, error, LoopResponseType.STREAMING)
            self.response_queue_ids.clear()
            self.active_sequences.clear()

    def _send(self, lit_api, transport, output: Output) -> None:
        data = lit_api.format_encoded_response(output.output)  # a reply dict -> one JSON line
        queue_id = self.response_queue_ids[output.uid]
        self.put_response(transport, queue_id, output.uid, data, output.status, LoopResponseType.STREAMING)
        if output.status == LitAPIStatus.FINISH_STREAMING:
            self.mark_completed(output.uid)


class CasaServeAPI(ls.LitAPI):
    """One wrapped model behind the HTTP endpoints of `ServeSpec`."""

    def __init__(self, source: ModelSource, settings: ServeSettings | None = None, model_name: str | None = None):
        self.source, self.settings = source, settings or ServeSettings()
        self.model_name = model_name or source.source
        super().__init__(stream=True, loop=EngineLoop(), spec=ServeSpec(self.settings, self.model_name))
        self.engine: ServeEngine | None = None
        self.inbox: collections.deque = collections.deque()

    def setup(self, device: str) -> None:
        model, tokenizer = self.source.load()
        self.engine = ServeEngine(model.to(device), tokenizer, self.settings)
        log.info("serving %s (%s) on %s", self.model_name, type(model).__name__, device)

    # -- what the loop calls ---------------------------------------------------------------
    def add_request(self, uid: str, request: dict) -> None:
        self.inbox.append((uid, request))

    def has_active_requests(self) -> bool:
        return bool(self.inbox) or self.engine.busy

    def has_capacity(self) -> bool:
        return True  # the engine answers 429 itself, with a message, past max_sessions

    def idle(self) -> None:
        self.engine.expire_idle()

    def step(self, prev_outputs) -> list[Output]:
        while self.inbox:
            self.engine.submit(*self.inbox.popleft())
        outputs = []
        for reply in self.engine.step():
            outputs.append(Output(reply.uid, reply.payload, LitAPIStatus.OK))
            if reply.last:
                outputs.append(Output(reply.uid, "", LitAPIStatus.FINISH_STREAMING))
        return outputs

    # -- LitAPI's abstract hooks (requests are decoded by the spec, in the HTTP process) ----------
    def decode_request(self, request):
        return request

    def predict(self, x):
        raise NotImplementedError("CasaServeAPI answers through step(); predict() is not used")

    def encode_response(self, output):
        return output


__all__ = ["CasaServeAPI", "EngineLoop", "ModelSource"]
