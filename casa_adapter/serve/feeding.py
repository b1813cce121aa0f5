"""How the engine queues a request's input: a chat prompt split into text runs and images (`queue_prompt`), and
the `Budget` that refuses input, with a 400, when it would run past the model's positions or a session's cache
bound; `eos_ids`, the ids that end an answer."""

from __future__ import annotations

from casa_adapter.fusion.stream.limits import CacheLimitError, StreamLimits
from casa_adapter.serve.errors import ServeError


def queue_prompt(session, inputs: dict, marker: int) -> None:
    """Queue a processed prompt's text runs and its images (adjacent markers: one `put_image` of several)."""
    ids, images = inputs["input_ids"].tolist(), inputs["images"]  # (T,), (n, 3, H, W) or None
    used, start = 0, 0
    while start < len(ids):
        end = start
        is_image = ids[start] == marker
        while end < len(ids) and (ids[end] == marker) == is_image:
            end += 1
        if is_image:
            session.put_image(list(images[used : used + end - start]))
            used += end - start
        else:
            session.put_text(ids[start:end])
        start = end


class Budget:
    """The positions a conversation may take (`max_positions`, the base's `max_position_embeddings`; None: no
    bound) and the sessions' cache bound (`limits`)."""

    def __init__(self, streams, limits: StreamLimits, max_positions: int | None):
        self.streams, self.limits, self.max_positions = streams, limits, max_positions

    def feed(self, session, put, max_tokens: int) -> None:
        """Queue input for a session (`put()`), refused whole when it, plus `max_tokens`, runs past the model's
        positions or the session's cache bound."""
        before = len(session.queue)
        try:
            put()
        except CacheLimitError as error:
            del session.queue[before:]
            raise ServeError(400, str(error)) from error
        queued = self.streams.queued_tokens(session)
        need = session.index + queued + max_tokens
        if self.max_positions is not None and need > self.max_positions:
            del session.queue[before:]
            raise ServeError(
                400,
                f"this call would take the conversation to {need} positions (max_tokens included), past the "
                f"model's {self.max_positions}; start a new session or ask for fewer tokens",
            )
        held, bound = session.cached_tokens() + queued + max_tokens, self.limits.max_cache_tokens
        if self.limits.evict == "error" and bound is not None and held > bound:
            del session.queue[before:]
            raise ServeError(
                400,
                f"this call would bring the session to {held} cached positions (max_tokens included), over "
                f"max_cache_tokens={bound}; start a new session",
            )


def eos_ids(model, tokenizer) -> set[int]:
    """End-of-sequence ids: the generation config's, else the tokenizer's."""
    eos = getattr(getattr(model.llm, "generation_config", None), "eos_token_id", None)
    eos = tokenizer.eos_token_id if eos is None else eos
    return set() if eos is None else {eos} if isinstance(eos, int) else set(eos)


__all__ = ["Budget", "eos_ids", "queue_prompt"]
