"""Streaming sessions: frames and text in, logits and tokens out, one conversation (batch 1).

    session = model.stream()
    session.add_image(frame)                 # a new window (CASA) / N image tokens in the cache (insertion)
    logits = session.add_text(ids)           # (1, t, V)
    new_ids = session.generate(max_new_tokens=16)
    session.state_bytes()                    # what the session holds

The session's logits equal one full forward over the whole interleaved sequence (each
`add_image` standing for one image marker, or several adjacent markers for a list of images).

- CASA (`CasaStream`): `add_image` feeds one marker token, which opens a window. Each CASA layer
  computes the image's keys/values once and keeps them in its `LayerCache` with the window's text
  so far; the previous window's keys are dropped. The text KV cache grows by text tokens only, so
  the state is bounded by the current window plus the text seen, never by the number of frames.
- Insertion (`InsertionStream`): `add_image` appends the image's N tokens to the KV cache; the
  state grows by N tokens every frame.

See docs/streaming.md.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import DynamicCache

from casa_adapter.backbone.compat import cache_kwarg
from casa_adapter.casa.cache import CasaCache
from casa_adapter.casa.windows import CasaInputs, build_inputs

ImageLike = Image.Image | np.ndarray | torch.Tensor


def kv_bytes(cache) -> int:
    """Bytes of the text KV cache (keys and values of every layer) of a transformers `Cache`."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


class StreamSession:
    """One streamed conversation over a wrapped model. Positions continue across calls.

    Subclasses say how an image enters (`_add_image_tokens`), how text is fed (`_add_text_ids`),
    and what the state is (`state_bytes`)."""

    def __init__(self, model):
        self.model = model
        self.cache = self._new_cache()
        self.index = 0
        """Positions used so far (the next token's position)."""
        self.last_logits: torch.Tensor | None = None
        """(1, V) logits at the last position fed: what `generate` continues from."""
        self._cache_kw = cache_kwarg(model.llm)

    def _new_cache(self):
        raise NotImplementedError

    def _add_image_tokens(self, tokens: torch.Tensor) -> None:
        raise NotImplementedError

    def _add_text_ids(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_bytes(self) -> int:
        """Bytes the session holds for the conversation (KV caches; model weights excluded)."""
        raise NotImplementedError

    # -- public API ------------------------------------------------------------------------
    @torch.no_grad()
    def add_image(self, image: ImageLike | list[ImageLike]) -> None:
        """Add one frame, or a list of images. Images added back to back (no text between them) open
        one window together, as adjacent markers do in one forward. The rule of `forward(images=)`
        holds: a tensor is preprocessed pixels (3, H, W), taken as it is; a PIL image or an ndarray
        goes through `model.vision.transform`."""
        pixels = self._pixels(image)  # (n, 3, S, S)
        tokens = self.model.encode_images([pixels])[0]  # (n, N, D)
        self._add_image_tokens(tokens)

    @torch.no_grad()
    def add_text(self, ids) -> torch.Tensor:
        """Feed text token ids (a list, (t,) or (1, t)); returns their logits (1, t, V)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.model.device).reshape(1, -1)  # (1, t)
        if ids.shape[1] == 0:
            raise ValueError("add_text() needs at least one token")
        return self._add_text_ids(ids)

    def next_token(self, do_sample: bool = False, temperature: float = 1.0) -> torch.Tensor:
        """The next token (1, 1) from the last logits, without feeding it."""
        self._settle()
        if self.last_logits is None:
            raise RuntimeError("nothing to continue: add an image or text to the session first")
        if not do_sample:
            return self.last_logits.argmax(-1, keepdim=True)  # (1, 1)
        probs = torch.softmax(self.last_logits.float() / temperature, dim=-1)  # (1, V)
        return torch.multinomial(probs, 1)

    @torch.no_grad()
    def generate(
        self,
        max_new_tokens: int = 16,
        do_sample: bool = False,
        temperature: float = 1.0,
        eos_token_id: int | list[int] | None = None,
    ) -> torch.Tensor:
        """Continue the text: returns the new ids (1, n), n <= max_new_tokens (stops after an eos id).
        Every new token is fed back, so the session holds it and can go on."""
        stop = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or [])
        new = []
        for _ in range(max_new_tokens):
            token = self.next_token(do_sample, temperature)  # (1, 1)
            new.append(token)
            self._add_text_ids(token)
            if int(token) in stop:
                break
        return torch.cat(new, 1) if new else torch.zeros(1, 0, dtype=torch.long, device=self.model.device)

    # -- helpers ---------------------------------------------------------------------------
    def _pixels(self, image: ImageLike | list[ImageLike]) -> torch.Tensor:
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        if not images:
            raise ValueError("add_image() needs at least one image")
        pixels = [x if isinstance(x, torch.Tensor) else self.model.vision.transform(x) for x in images]
        if len({tuple(x.shape) for x in pixels}) > 1:
            raise ValueError(f"images added together must have one shape, got {[tuple(x.shape) for x in pixels]}")
        return torch.stack(pixels)  # (n, 3, H, W)

    def _settle(self) -> None:
        """Feed what the session holds back (images waiting for their window's first text); nothing here."""

    def _run(self, n: int, all_logits: bool, **inputs) -> torch.Tensor:
        """Feed n new positions through the LLM with the session cache; logits (1, n or 1, V)."""
        positions = torch.arange(self.index, self.index + n, device=self.model.device).unsqueeze(0)  # (1, n)
        out = self.model.llm(
            **inputs,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=0 if all_logits else 1,
            **{self._cache_kw: self.cache},
        )
        self.index += n
        self.last_logits = out.logits[:, -1]  # (1, V)
        return out.logits


class CasaStream(StreamSession):
    """CASA: a marker token opens each window; image K/V live in the CASA layers' window caches."""

    def __init__(self, model):
        super().__init__(model)
        self.window = 0
        """The current window id (0 before the first image)."""
        self.pending: list[torch.Tensor] = []
        """Image tokens (n, N, D) added since the last text: they open the next window together. Their
        markers are fed with the window's first text (or when `generate` needs the next token), because in
        one forward every marker of a run sees every image of the run."""

    def _new_cache(self) -> CasaCache:
        return CasaCache(config=self.model.llm.config)

    def _add_image_tokens(self, tokens: torch.Tensor) -> None:
        self.pending.append(tokens)

    def _add_text_ids(self, ids: torch.Tensor) -> torch.Tensor:
        if self.pending:
            return self._open_window(ids)
        index = torch.arange(self.index, self.index + ids.shape[1], device=ids.device).unsqueeze(0)  # (1, t)
        inputs = CasaInputs(torch.full_like(index, self.window), index)
        return self._run(ids.shape[1], True, input_ids=ids, casa_inputs=inputs)

    def _open_window(self, ids: torch.Tensor | None) -> torch.Tensor:
        """Feed the pending images' markers, then `ids` (1, t) if any, in one call: one new window.
        Returns the logits of `ids` (1, t, V) (of the last marker when there is no text)."""
        marker, tokens = self.model.image_token_id, torch.cat(self.pending)  # (n, N, D)
        markers = torch.full((1, tokens.shape[0]), marker, dtype=torch.long, device=self.model.device)  # (1, n)
        fed = markers if ids is None else torch.cat([markers, ids], 1)  # (1, n + t)
        self.window += 1
        self.pending = []
        inputs = build_inputs(fed, marker, [tokens], first_window=self.window, first_index=self.index)
        logits = self._run(fed.shape[1], ids is not None, input_ids=fed, casa_inputs=inputs)
        return logits if ids is None else logits[:, markers.shape[1] :]

    def _settle(self) -> None:
        if self.pending:
            self._open_window(None)

    def state_bytes(self) -> int:
        """Text KV cache + every CASA layer's window cache (current image and window text K/V) + pending images."""
        pending = sum(t.numel() * t.element_size() for t in self.pending)
        return kv_bytes(self.cache) + self.cache.casa_nbytes() + pending


class InsertionStream(StreamSession):
    """Token insertion: every image's N tokens enter the KV cache and stay there."""

    def _new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.llm.config)

    def _add_image_tokens(self, tokens: torch.Tensor) -> None:
        embeds = tokens.reshape(1, -1, tokens.shape[-1])  # (1, n*N, D)
        self._run(embeds.shape[1], False, inputs_embeds=embeds)

    def _add_text_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self._run(ids.shape[1], True, input_ids=ids)

    def state_bytes(self) -> int:
        """The KV cache: text and image tokens."""
        return kv_bytes(self.cache)


__all__ = ["StreamSession", "CasaStream", "InsertionStream", "kv_bytes"]
