"""What one session feeds in one step, per fusion: its queued text and images as new positions.

A session queues items in order: `Text(ids)` and `Images(tokens)` (one `put_image` call: k images
that open one window together). A step turns each session's queue into a `Chunk` (n new positions,
the window id of each, which are text), then stacks the chunks of all sessions into the LLM's
inputs for one forward, right-padded to the longest (pads are masked out by the caller).

Windows: a run of image items opens a new window (id + 1); text belongs to the window it follows
(0 before the first image). Under CASA an image is one marker position; under insertion its N tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from casa_adapter.casa.cache import CasaCache
from casa_adapter.casa.windows import CasaInputs


@dataclass
class Text:
    ids: torch.Tensor
    """(t,) long token ids."""
    framing: bool = False
    """Framing text put around an image (`pre_image` / `post_image`): fed, but its logits are not returned."""


@dataclass
class Images:
    tokens: torch.Tensor
    """(k, N, D) projected image tokens of k images added together."""


Item = Text | Images


@dataclass
class Chunk:
    """One session's new positions in a step."""

    windows: torch.Tensor
    """(n,) long window id of each position."""
    text: torch.Tensor
    """(n,) bool: text positions whose logits are returned (not markers, image tokens or framing)."""
    ids: torch.Tensor | None = None
    """(n,) long token ids, markers included (CASA)."""
    images: torch.Tensor | None = None
    """(k, N, D) image tokens of the chunk's markers, in order (CASA), or None."""
    embeds: torch.Tensor | None = None
    """(n, D) input embeddings (insertion)."""

    @property
    def n(self) -> int:
        return self.windows.shape[0]


def item_windows(queue: list[Item], window: int) -> list[int]:
    """The window id of each item: a run of image items opens window + 1, text stays in the current one."""
    out, previous = [], None
    for item in queue:
        if isinstance(item, Images) and not isinstance(previous, Images):
            window += 1
        out.append(window)
        previous = item
    return out


class CasaChunks:
    """CASA: an image is one marker position; its tokens go to the CASA layers through `CasaInputs`."""

    def __init__(self, model):
        self.model, self.marker = model, model.image_token_id

    def new_cache(self) -> CasaCache:
        """The shared cache: the text KV cache and the CASA layers' window caches."""
        return CasaCache(config=self.model.llm.config)

    def size(self, item: Item) -> int:
        """Positions the item takes in the KV cache."""
        return item.ids.numel() if isinstance(item, Text) else item.tokens.shape[0]

    def chunk(self, queue: list[Item], window: int) -> Chunk:
        ids, windows, images, text = [], [], [], []
        for item, w in zip(queue, item_windows(queue, window)):
            if isinstance(item, Text):
                ids.append(item.ids)
            else:
                k, device = item.tokens.shape[0], item.tokens.device
                ids.append(torch.full((k,), self.marker, dtype=torch.long, device=device))
                images.append(item.tokens)
            windows.append(torch.full_like(ids[-1], w))
            text.append(torch.full_like(ids[-1], isinstance(item, Text) and not item.framing, dtype=torch.bool))
        ids = torch.cat(ids)  # (n,)
        return Chunk(torch.cat(windows), torch.cat(text), ids=ids, images=torch.cat(images) if images else None)

    def inputs(self, chunks: list[Chunk | None], starts: torch.Tensor, t: int) -> dict:
        """input_ids (B, t) and the step's `CasaInputs`, rows right-padded (pads: window 0, never keys)."""
        B, device = len(chunks), starts.device
        ids = torch.zeros(B, t, dtype=torch.long, device=device)  # pad id 0: never the marker (one past the table)
        windows = torch.zeros(B, t, dtype=torch.long, device=device)
        index = starts.unsqueeze(-1) + torch.arange(t, device=device)  # (B, t)
        for b, c in enumerate(chunks):
            if c is not None:
                ids[b, : c.n], windows[b, : c.n] = c.ids, c.windows
        inputs = CasaInputs(windows, index, text_gist=(ids == self.marker) & (windows > 0))  # gists: the markers
        with_images = [(b, c) for b, c in enumerate(chunks) if c is not None and c.images is not None]
        if with_images:
            _add_images(inputs, with_images, self.marker)
        return {"input_ids": ids, "casa_inputs": inputs}


def _add_images(inputs: CasaInputs, rows: list[tuple[int, Chunk]], marker: int) -> None:
    """Flatten each row's image tokens into (B, I, D), with their window ids and window-start positions."""
    B = inputs.text_windows.shape[0]
    per_row = [c.images.shape[0] * c.images.shape[1] for _, c in rows]
    ref = rows[0][1].images
    tokens = ref.new_zeros(B, max(per_row), ref.shape[-1])  # (B, I, D)
    windows = inputs.text_windows.new_zeros(B, max(per_row))  # (B, I), 0 = padding
    start = torch.zeros_like(windows)
    for b, c in rows:
        k, N = c.images.shape[:2]
        markers = (c.ids == marker).nonzero().squeeze(-1)  # (k,) positions of the markers
        first = torch.ones_like(markers, dtype=torch.bool)
        first[1:] = markers[1:] != markers[:-1] + 1  # a run's first marker
        run_start = markers[first][first.long().cumsum(0) - 1]  # (k,) position of each marker's run start
        tokens[b, : k * N] = c.images.reshape(k * N, -1)
        windows[b, : k * N] = c.windows[markers].repeat_interleave(N)
        start[b, : k * N] = run_start.repeat_interleave(N)
    inputs.image_tokens, inputs.image_windows, inputs.image_start = tokens, windows, start


class InsertionChunks:
    """Token insertion: an image's N tokens are N positions of input embeddings."""

    def __init__(self, model):
        self.model = model
        self.embed = model.llm.get_input_embeddings()

    def new_cache(self) -> DynamicCache:
        """The shared cache: one KV cache for text and image tokens."""
        return DynamicCache(config=self.model.llm.config)

    def size(self, item: Item) -> int:
        return item.ids.numel() if isinstance(item, Text) else item.tokens.shape[0] * item.tokens.shape[1]

    def chunk(self, queue: list[Item], window: int) -> Chunk:
        embeds, windows, text = [], [], []
        for item, w in zip(queue, item_windows(queue, window)):
            if isinstance(item, Text):
                embeds.append(self.embed(item.ids))  # (t, D)
            else:
                embeds.append(item.tokens.reshape(-1, item.tokens.shape[-1]))  # (k*N, D)
            windows.append(torch.full((embeds[-1].shape[0],), w, dtype=torch.long, device=embeds[-1].device))
            text.append(torch.full_like(windows[-1], isinstance(item, Text) and not item.framing, dtype=torch.bool))
        return Chunk(torch.cat(windows), torch.cat(text), embeds=torch.cat(embeds))

    def inputs(self, chunks: list[Chunk | None], starts: torch.Tensor, t: int) -> dict:
        """inputs_embeds (B, t, D), rows right-padded with zeros."""
        ref = next(c.embeds for c in chunks if c is not None)
        embeds = ref.new_zeros(len(chunks), t, ref.shape[-1])  # (B, t, D)
        for b, c in enumerate(chunks):
            if c is not None:
                embeds[b, : c.n] = c.embeds
        return {"inputs_embeds": embeds}


__all__ = ["Text", "Images", "Item", "Chunk", "CasaChunks", "InsertionChunks", "item_windows"]
