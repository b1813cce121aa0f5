"""How much a streaming session may keep: `StreamLimits` and the error it raises.

The limit counts positions in the LLM's self-attention KV cache: text (markers included) under CASA,
text and image tokens under insertion. The CASA layers' window caches (one window's image and text
keys) are bounded by construction and not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Evict = Literal["error", "window"]


class CacheLimitError(ValueError):
    """A session was given more than its `StreamLimits.max_cache_tokens` allow; its state is unchanged."""


class ContinuationError(CacheLimitError):
    """A session of a family whose recurrent layers cannot continue their state over several positions (Jamba,
    Zamba: `fusion.stream.recurrent.ONE_POSITION_AFTER_FIRST`) was given more than one position for a step
    after its first; its state is unchanged."""


@dataclass
class StreamLimits:
    """Per-session bounds of a streaming session (`model.stream(...)`, `model.stream_batch(...)`)."""

    max_cache_tokens: int | None = None
    """Most positions one session keeps in the KV cache; None = unbounded."""
    evict: Evict = "error"
    """What happens to input that would go past `max_cache_tokens`: "error" refuses it with a
    `CacheLimitError` (nothing is fed), "window" first drops the oldest windows' positions (a window:
    an image and the text after it; the text before the first image is the oldest), never the window
    the session is in. What stays was computed while the dropped text was visible, and keeps its
    positions (as in StreamingLLM-style eviction), so logits no longer equal one full forward."""

    def __post_init__(self):
        if self.max_cache_tokens is not None and self.max_cache_tokens < 1:
            raise ValueError(f"max_cache_tokens must be a positive count or None, got {self.max_cache_tokens}")
        if self.evict not in ("error", "window"):
            raise ValueError(f"evict must be 'error' or 'window', got {self.evict!r}")


__all__ = ["StreamLimits", "CacheLimitError", "ContinuationError", "Evict"]
