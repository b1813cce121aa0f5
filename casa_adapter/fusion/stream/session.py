"""`StreamSession`: one streamed conversation: frames and text in, logits and tokens out.

    session = model.stream()                 # or model.stream(max_cache_tokens=4096, evict="window")
    session.add_image(frame)                 # CASA: opens a window; insertion: N image tokens
    logits = session.add_text(ids)           # (1, t, V)
    new_ids = session.generate(max_new_tokens=16)
    session.state_bytes(); session.reset(); session.close()

The session's logits equal one full forward over the whole interleaved sequence (each `add_image`
standing for one image marker, or several adjacent markers for a list of images; images added back
to back open one window together, as adjacent markers do).

A session is a row of a `StreamBatch` (`model.stream()` makes a batch of one). `put_image` /
`put_text` only queue; `add_image` queues, `add_text` queues and runs the batch's step.

- CASA: an image is one marker position; each CASA layer computes the image's keys/values once and
  keeps them in its window cache with the window's text so far; the previous window's are dropped.
  The text KV cache grows by text tokens only: the state is bounded by the window + the text seen.
- Insertion: an image's N tokens enter the KV cache and stay there.

See docs/streaming.md.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from casa_adapter.fusion.stream.chunks import Images, Item, Text
from casa_adapter.fusion.stream.limits import CacheLimitError

ImageLike = Image.Image | np.ndarray | torch.Tensor


class StreamSession:
    """One conversation in a `StreamBatch`. Positions continue across calls."""

    def __init__(self, batch):
        self.batch, self.model = batch, batch.model
        self.queue: list[Item] = []
        """Items put since the last step, in order."""
        self.index = 0
        """Positions used so far (the next token's position)."""
        self.window = 0
        """The window the session is in (0 before the first image)."""
        self.row: int | None = None
        """The session's row in the batch's cache (None until its first step)."""
        self.last_logits: torch.Tensor | None = None
        """(1, V) logits at the last position fed: what `generate` continues from."""
        self.closed = False

    @property
    def cache(self):
        """The batch's shared cache (this session's state is its row)."""
        return self.batch.cache

    # -- queueing --------------------------------------------------------------------------
    @torch.no_grad()
    def put_image(self, image: ImageLike | list[ImageLike]) -> None:
        """Queue one frame, or a list of images. Images put back to back (no text between them) open one
        window together, as adjacent markers do in one forward. With framing (`model.stream(pre_image=,
        post_image=)`) the framing text goes before and after each call, so each call opens its own window.
        The rule of `forward(images=)` holds: a
        tensor is preprocessed pixels (3, H, W), taken as it is; a PIL image or an ndarray goes through
        `model.vision.transform`."""
        self._check_open()
        pixels = self._pixels(image)  # (n, 3, S, S)
        tokens = self.model.encode_images([pixels])[0]  # (n, N, D)
        pre, post = self.batch.framing
        items = [Images(tokens)]
        items = ([Text(pre, framing=True)] if pre is not None else []) + items
        items += [Text(post, framing=True)] if post is not None else []
        queued = len(self.queue)
        try:
            for item in items:
                self.batch.admit(self, item)
        except CacheLimitError:
            del self.queue[queued:]  # nothing of this image is queued
            raise

    def put_text(self, ids) -> None:
        """Queue text token ids (a list, (t,) or (1, t))."""
        self._check_open()
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.model.device).reshape(-1)  # (t,)
        if ids.numel() == 0:
            raise ValueError("add_text() needs at least one token")
        self.batch.admit(self, Text(ids))

    # -- one session's calls -----------------------------------------------------------------
    add_image = put_image
    """Add a frame (see `put_image`); it is fed with the next text or when `generate` needs it."""

    def add_text(self, ids) -> torch.Tensor:
        """Feed text token ids (a list, (t,) or (1, t)); returns their logits (1, t, V)."""
        self.put_text(ids)
        return self.batch.step()[self]

    def next_token(self, do_sample: bool = False, temperature: float = 1.0) -> torch.Tensor:
        """The next token (1, 1) from the last logits, without feeding it (queued input is fed first)."""
        self._check_open()
        if self.queue:
            self.batch.step()
        if self.last_logits is None:
            raise RuntimeError("nothing to continue: add an image or text to the session first")
        if not do_sample:
            return self.last_logits.argmax(-1, keepdim=True)  # (1, 1)
        probs = torch.softmax(self.last_logits.float() / temperature, dim=-1)  # (1, V)
        return torch.multinomial(probs, 1)

    def generate(
        self,
        max_new_tokens: int = 16,
        do_sample: bool = False,
        temperature: float = 1.0,
        eos_token_id: int | list[int] | None = None,
    ) -> torch.Tensor:
        """Continue the text: returns the new ids (1, n), n <= max_new_tokens (stops after an eos id).
        Every new token is fed back, so the session holds it and can go on."""
        self._check_open()
        return self.batch.generate([self], max_new_tokens, do_sample, temperature, eos_token_id)[self]

    # -- state -----------------------------------------------------------------------------
    def state_bytes(self) -> int:
        """Bytes the session holds for the conversation (its KV cache slots, its CASA window caches, its
        queued images; model weights excluded)."""
        return self.batch.session_bytes(self)

    def cached_tokens(self) -> int:
        """Positions the session holds in the self-attention KV cache (what `max_cache_tokens` bounds)."""
        return self.batch.cached_tokens(self)

    def reset(self) -> None:
        """Forget the conversation (caches, queue, positions): the session starts again, empty."""
        self._check_open()
        self.batch.release(self)

    def close(self) -> None:
        """Free the session's state and leave the batch; later calls raise. Closing twice is harmless."""
        if not self.closed:
            self.batch.close(self)
            self.closed = True

    # -- helpers ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this stream session is closed; open a new one with model.stream()")

    def _pixels(self, image: ImageLike | list[ImageLike]) -> torch.Tensor:
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        if not images:
            raise ValueError("add_image() needs at least one image")
        pixels = [x if isinstance(x, torch.Tensor) else self.model.vision.transform(x) for x in images]
        if len({tuple(x.shape) for x in pixels}) > 1:
            raise ValueError(f"images added together must have one shape, got {[tuple(x.shape) for x in pixels]}")
        return torch.stack(pixels)  # (n, 3, H, W)


__all__ = ["StreamSession", "ImageLike"]
