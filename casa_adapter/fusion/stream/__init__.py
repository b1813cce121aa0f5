"""Streaming: sessions that take frames and text as they come, alone or many decoded together.

- `session.StreamSession`: one conversation (`model.stream()`); its logits equal one full forward.
- `batch.StreamBatch`: many sessions, each step of all of them in one forward (`model.stream_batch()`).
- `limits.StreamLimits`: a per-session bound on the KV cache, refused or met by dropping old windows.
- `chunks`: what a session feeds in a step, per fusion; `rows`: the shared cache's rows; `recurrent`: a hybrid's
  recurrent states (rows never padded).

See docs/streaming.md.
"""

from casa_adapter.fusion.stream.batch import StreamBatch
from casa_adapter.fusion.stream.limits import CacheLimitError, ContinuationError, StreamLimits
from casa_adapter.fusion.stream.session import StreamSession

__all__ = ["StreamSession", "StreamBatch", "StreamLimits", "CacheLimitError", "ContinuationError"]
