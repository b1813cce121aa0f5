"""`StreamBatch`: many streamed conversations decoded together, one forward per step.

    streams = model.stream_batch()
    a, b = streams.open(), streams.open()
    a.put_image(frame); a.put_text(ids_a); b.put_text(ids_b)
    logits = streams.step()                        # {a: (1, ta, V), b: (1, tb, V)}: one forward
    new = streams.generate([a, b], max_new_tokens=8)   # {a: (1, n), b: (1, m)}: decoded together

Each session is a row of one shared cache (self-attention KV cache, and for CASA the CASA layers'
window caches); a step feeds every session's queued items, right-padded to the longest, with a
2D attention mask over the cache's slots (holes masked) and each session's own positions. Framing
(`pre_image` / `post_image` token ids, as a `Processor` with the same framing writes them) is put
around each `put_image` of every session. A
session's logits equal running it alone (tests: within 1e-5, fp32). A session gets its row at its
first step and gives it back on `close()`; holes are squeezed out when they outnumber what is kept.

Families whose cache has sliding-window layers (Gemma 2/3, Mistral with `sliding_window`) keep
slots, not positions, in those layers: holes would shorten their window, so they run one session
per batch (`model.stream()`), and `evict="window"` is refused for them (`solo` says why).

Hybrids (mamba, delta-net, short-conv layers beside attention) keep a recurrent state per row that
padding would move: their rows are never padded; a step runs one forward per chunk length, and rows
not fed in a forward get their state back (`recurrent`). Jamba and Zamba take one position per step
after a session's first (`ContinuationError` beyond).
"""

from __future__ import annotations

import torch

from casa_adapter.backbone.compat import cache_kwarg
from casa_adapter.casa.cache import CasaCache
from casa_adapter.fusion.stream import recurrent, rows
from casa_adapter.fusion.stream.chunks import Chunk, Images, Item, item_windows
from casa_adapter.fusion.stream.limits import CacheLimitError, ContinuationError, StreamLimits
from casa_adapter.fusion.stream.session import StreamSession

HOLE = -1
"""Window id of a slot that holds nothing (padding, evicted)."""


class StreamBatch:
    """Sessions over one wrapped model whose steps run together. See the module docstring."""

    def __init__(self, model, limits: StreamLimits | None = None, pre_image=None, post_image=None):
        self.model, self.limits = model, limits or StreamLimits()
        self.framing = tuple(_ids(x, model.device) for x in (pre_image, post_image))
        """(pre, post) token ids (t,) every session puts before / after each `put_image` (None: no framing)."""
        self.chunks = model.stream_chunks(model)
        self.cache = self.chunks.new_cache()
        self.sliding = rows.has_sliding_layers(self.cache)
        self.recurrent = bool(recurrent.recurrent_layers(self.cache))
        """Whether some layer keeps a recurrent state per row (a hybrid): rows are then never padded."""
        self.solo = rows.solo_reason(self.cache, model.config.model_type)
        """Why this batch holds one session at a time (its sessions cannot share a forward), or None."""
        self.one_position = recurrent.continuation_limit(model.config.model_type)
        """Why a session takes one position per step after its first (Jamba, Zamba), or None."""
        if self.sliding and self.limits.evict == "window":
            raise ValueError(
                f"evict='window' needs full-attention caches; {model.config.model_type} has sliding-window "
                "layers, whose slots cannot be dropped one window at a time: use evict='error'"
            )
        self.sessions: list[StreamSession] = []
        self.rows: list[StreamSession] = []
        """Sessions in the order of the cache's rows."""
        self.slots = torch.zeros(0, 0, dtype=torch.long, device=model.device)
        """(B, L) window id of each self-attention cache slot of each row; HOLE where it holds nothing."""
        self._cache_kw = cache_kwarg(model.llm)

    # -- sessions --------------------------------------------------------------------------
    def open(self) -> StreamSession:
        """A new session in this batch (no row until its first step)."""
        session = StreamSession(self)
        self.sessions.append(session)
        return session

    def release(self, session: StreamSession) -> None:
        """Forget what a session holds (its row, its queue); it stays open and starts again at position 0."""
        if session.row is not None:
            keep = [b for b, s in enumerate(self.rows) if s is not session]
            self.rows = [self.rows[b] for b in keep]
            keep_t = torch.tensor(keep, dtype=torch.long, device=self.slots.device)
            rows.keep_rows(self.cache, keep_t)
            self.slots = self.slots.index_select(0, keep_t)
            for b, s in enumerate(self.rows):
                s.row = b
            session.row = None
        session.queue, session.index, session.window, session.last_logits = [], 0, 0, None

    def close(self, session: StreamSession) -> None:
        self.release(session)
        self.sessions.remove(session)

    # -- budget ----------------------------------------------------------------------------
    def cached_tokens(self, session: StreamSession) -> int:
        """Positions the session holds in the self-attention cache."""
        return 0 if session.row is None else int((self.slots[session.row] != HOLE).sum())

    def queued_tokens(self, session: StreamSession) -> int:
        return sum(self.chunks.size(item) for item in session.queue)

    def admit(self, session: StreamSession, item: Item) -> None:
        """Queue an item, within the session's limit: refuse it, or drop the oldest windows first."""
        step = self.queued_tokens(session) + self.chunks.size(item)
        if self.one_position and session.index > 0 and step > 1:
            raise ContinuationError(
                f"{self.one_position}: this input would feed {step} positions at once (put text one token per step, "
                "or start a new session with the whole prompt)"
            )
        limit = self.limits.max_cache_tokens
        need = self.cached_tokens(session) + step
        if limit is not None and need > limit:
            if self.limits.evict == "error":
                raise CacheLimitError(
                    f"this input would bring the session to {need} cached positions, over max_cache_tokens={limit} "
                    "(start a new session, reset() this one, or use evict='window')"
                )
            self._evict(session, item, need - limit)
        session.queue.append(item)

    def _evict(self, session: StreamSession, item: Item, excess: int) -> None:
        """Drop the oldest windows' slots of the session (never the window it is or will be in)."""
        current = item_windows([*session.queue, item], session.window)[-1]
        if session.row is not None:
            slots = self.slots[session.row]  # (L,)
            for window in sorted({int(w) for w in slots[(slots != HOLE) & (slots < current)].tolist()}):
                if excess <= 0:
                    break
                drop = slots == window
                excess -= int(drop.sum())
                slots[drop] = HOLE
            self._maybe_compact()
        if excess > 0:
            raise CacheLimitError(
                f"the window this input belongs to would hold {excess} positions more than max_cache_tokens="
                f"{self.limits.max_cache_tokens} allow once every older window is dropped"
            )

    # -- the step --------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> dict[StreamSession, torch.Tensor]:
        """Feed every session's queue (one forward; with recurrent states, one per chunk length). Returns each
        fed session's text logits (1, t, V)."""
        work = {s: self.chunks.chunk(s.queue, s.window) for s in self.sessions if s.queue}
        if not work:
            return {}
        for s in work:
            if s.row is None:
                self._add_row(s)
        results = {}
        for group in self._groups(work):
            results.update(self._forward(group))
        self._maybe_compact()
        return results

    def _groups(self, work: dict[StreamSession, Chunk]) -> list[dict[StreamSession, Chunk]]:
        """The step's forwards: one for everything, or with recurrent states, one per chunk length (padding
        would move a row's state; see `recurrent`)."""
        if not self.recurrent:
            return [work]
        lengths = sorted({c.n for c in work.values()})
        return [{s: c for s, c in work.items() if c.n == n} for n in lengths]

    def _forward(self, work: dict[StreamSession, Chunk]) -> dict[StreamSession, torch.Tensor]:
        """One forward over every row: these sessions' chunks, right-padded; the other rows all pads (holes),
        their recurrent states put back afterwards."""
        chunks = [work.get(s) for s in self.rows]
        device, t = self.slots.device, max(c.n for c in work.values())
        n = torch.tensor([0 if c is None else c.n for c in chunks], device=device)  # (B,)
        starts = torch.tensor([s.index for s in self.rows], device=device)  # (B,)
        steps = torch.arange(t, device=device)
        fresh = steps < n.unsqueeze(-1)  # (B, t) real positions; the rest are pads
        positions = (starts.unsqueeze(-1) + torch.minimum(steps, (n - 1).unsqueeze(-1))).clamp(min=0)  # pads repeat
        mask = torch.cat([self.slots != HOLE, fresh], 1).long()  # (B, L + t)
        before = recurrent.snapshot(self.cache) if self.recurrent and len(work) < len(self.rows) else None
        out = self.model.llm(
            **self.chunks.inputs(chunks, starts, t),
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_kw: self.cache},
        )
        if before is not None:
            recurrent.restore(self.cache, before, n > 0)
        new_slots = torch.full((len(chunks), t), HOLE, dtype=torch.long, device=device)
        results = {}
        for b, (s, c) in enumerate(zip(self.rows, chunks)):
            if c is None:
                continue
            new_slots[b, : c.n] = c.windows
            s.index, s.window, s.queue = s.index + c.n, int(c.windows.max()), []
            s.last_logits = out.logits[b, c.n - 1].unsqueeze(0)  # (1, V)
            results[s] = out.logits[b, : c.n][c.text].unsqueeze(0)  # (1, t_text, V)
        self.slots = torch.cat([self.slots, new_slots], 1)
        return results

    @torch.no_grad()
    def generate(
        self,
        sessions: list[StreamSession],
        max_new_tokens: int = 16,
        do_sample: bool = False,
        temperature: float = 1.0,
        eos_token_id: int | list[int] | None = None,
    ) -> dict[StreamSession, torch.Tensor]:
        """Continue these sessions together, one step per token: {session: new ids (1, n)}, n <= max_new_tokens
        (a session stops after an eos id). Every new token is fed back, so each session can go on."""
        stop = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or [])
        new = {s: [] for s in sessions}
        live = list(sessions)
        for _ in range(max_new_tokens):
            if not live:
                break
            for s in live:
                token = s.next_token(do_sample, temperature)  # (1, 1)
                new[s].append(token)
                s.put_text(token)
            self.step()
            live = [s for s in live if int(new[s][-1]) not in stop]
        empty = torch.zeros(1, 0, dtype=torch.long, device=self.model.device)
        return {s: torch.cat(ids, 1) if ids else empty for s, ids in new.items()}

    # -- bookkeeping -----------------------------------------------------------------------
    def _add_row(self, session: StreamSession) -> None:
        if self.rows and self.solo:
            raise ValueError(f"{self.solo}; run them one by one with model.stream()")
        rows.add_row(self.cache)
        holes = torch.full((1, self.slots.shape[1]), HOLE, dtype=torch.long, device=self.slots.device)
        self.slots = torch.cat([self.slots, holes])
        session.row = len(self.rows)
        self.rows.append(session)

    def _maybe_compact(self) -> None:
        """Squeeze out the holes once they outnumber the most any row keeps."""
        if self.sliding or not self.rows:
            return
        most = int((self.slots != HOLE).sum(-1).max())
        if self.slots.shape[1] > 2 * most + 64:
            self.slots = rows.compact(self.cache, self.slots)

    def session_bytes(self, session: StreamSession) -> int:
        """Bytes of the caches a session holds (its kept slots; the CASA window caches' row; its recurrent states)
        + its queued images."""
        queued = _queued_bytes(session)
        if session.row is None:
            return queued
        row, total = session.row, queued
        for layer in rows.kv_layers(self.cache):
            held = int((self.slots[row, self.slots.shape[1] - layer.keys.shape[2] :] != HOLE).sum())
            total += held * _slot_bytes(layer.keys, layer.values)
        for layer_cache in getattr(self.cache, "casa_layers", {}).values():
            if layer_cache.keys is not None:
                total += int((layer_cache.windows[row] > 0).sum()) * _slot_bytes(layer_cache.keys, layer_cache.values)
        return total + recurrent.row_bytes(self.cache)

    def state_bytes(self) -> int:
        """Bytes the whole batch holds: every cache tensor, holes included, and the queued images."""
        total = sum(_nbytes(layer.keys) + _nbytes(layer.values) for layer in rows.kv_layers(self.cache))
        total += recurrent.nbytes(self.cache)
        if isinstance(self.cache, CasaCache):
            total += self.cache.casa_nbytes()
        return total + sum(_queued_bytes(s) for s in self.sessions)


def _ids(ids, device) -> torch.Tensor | None:
    """Framing token ids (a list or tensor) -> (t,) long, or None when there are none."""
    if ids is None or len(ids) == 0:
        return None
    return torch.as_tensor(ids, dtype=torch.long, device=device).reshape(-1)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _queued_bytes(session: StreamSession) -> int:
    """Bytes of the image tokens a session has queued."""
    return sum(_nbytes(item.tokens) for item in session.queue if isinstance(item, Images))


def _slot_bytes(keys: torch.Tensor, values: torch.Tensor) -> int:
    """Bytes of one slot of one row: keys and values (B, H, L, hd)."""
    return _nbytes(keys[0, :, 0]) + _nbytes(values[0, :, 0])


__all__ = ["StreamBatch", "HOLE"]
