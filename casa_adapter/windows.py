"""Windows: what a forward call tells the CASA layers, and what they keep between calls.

`CasaInputs` is the one channel by which images reach the CASA layers: the model builds it
from `input_ids` (image markers) and the projected image tokens, and passes it down the HF
forward as the keyword argument `casa_inputs`. During `generate` and streaming the layers keep
per-layer `LayerCache`s inside a `CasaCache` (a transformers `DynamicCache`, so it also travels
to every attention call): only the current window's keys, never closed windows.

Window rule (see docs/architecture.md): a run of consecutive image markers opens a window that
holds those images; the run's first marker is the window start. Text before the first marker of
a sample is in window 0 (no CASA contribution). Window ids are unique within a row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass
class CasaInputs:
    """Per-call window layout. B rows, T tokens in this call, I image tokens (padded)."""

    text_windows: torch.Tensor
    """(B, T) long: window id of each token; 0 = no window (before the first image, padding)."""
    text_index: torch.Tensor
    """(B, T) long: sequence index of each token (monotonic within a sample)."""
    image_tokens: torch.Tensor | None = None
    """(B, I, D): projected image tokens of the windows opened in this call, padded."""
    image_windows: torch.Tensor | None = None
    """(B, I) long: window id of each image token; 0 = padding."""
    image_start: torch.Tensor | None = None
    """(B, I) long: position in this call (0..T-1) of the token that opened the image's window."""

    @property
    def has_images(self) -> bool:
        return self.image_tokens is not None and self.image_tokens.shape[1] > 0

    def expand(self, n: int) -> "CasaInputs":
        """Repeat each row n times (num_beams / num_return_sequences)."""
        rep = lambda t: None if t is None else t.repeat_interleave(n, dim=0)
        return CasaInputs(rep(self.text_windows), rep(self.text_index), rep(self.image_tokens),
                          rep(self.image_windows), rep(self.image_start))


def marker_windows(input_ids: torch.Tensor, image_token_id: int, attention_mask: torch.Tensor | None = None,
                   sample_ids: torch.Tensor | None = None, first_window: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Window id of every token and the run-start flags.

    input_ids (B, T) -> (windows (B, T) long, run_start (B, T) bool). A marker run starts a new window;
    with `sample_ids` (packed rows) a new sample starts with window 0 until its first marker.
    """
    marker = input_ids == image_token_id  # (B, T)
    prev = torch.nn.functional.pad(marker[:, :-1], (1, 0), value=False)  # (B, T)
    boundary = torch.zeros_like(marker)
    if sample_ids is not None:
        boundary[:, 1:] = sample_ids[:, 1:] != sample_ids[:, :-1]
    run_start = marker & (~prev | boundary)
    count = run_start.long().cumsum(-1)  # (B, T) runs so far
    before = (count - run_start.long()) * boundary.long()  # runs before each sample start, at the start
    base = before.cummax(-1).values  # (B, T) runs before the current sample
    windows = torch.where(count > base, count + (first_window - 1), torch.zeros_like(count))
    if attention_mask is not None:
        windows = windows * attention_mask.long()
    return windows, run_start


def build_inputs(input_ids: torch.Tensor, image_token_id: int, image_features: list[torch.Tensor | None],
                 attention_mask: torch.Tensor | None = None, sample_ids: torch.Tensor | None = None,
                 first_window: int = 1, first_index: int = 0) -> CasaInputs:
    """CasaInputs for one call.

    input_ids (B, T); image_features: per row, (n_markers_in_row, N, D) projected tokens in marker order
    (None or n=0 for a row without images). Raises ValueError when marker and image counts differ.
    """
    B, T = input_ids.shape
    windows, run_start = marker_windows(input_ids, image_token_id, attention_mask, sample_ids, first_window)
    index = torch.arange(first_index, first_index + T, device=input_ids.device).expand(B, T)  # (B, T)
    markers = input_ids == image_token_id
    start_pos = _run_start_positions(run_start)  # (B, T): position of the run start each token belongs to
    rows, lengths = [], []
    for b in range(B):
        feats = image_features[b] if b < len(image_features) else None
        n_img = 0 if feats is None else feats.shape[0]
        pos = markers[b].nonzero().squeeze(-1)  # (n_markers,)
        if n_img != pos.numel():
            raise ValueError(f"row {b}: input_ids has {pos.numel()} image markers but {n_img} images were given")
        rows.append((feats, pos))
        lengths.append(0 if feats is None else feats.shape[0] * feats.shape[1])
    if max(lengths, default=0) == 0:
        return CasaInputs(windows, index)
    return _pad_images(rows, lengths, windows, start_pos, CasaInputs(windows, index))


def _run_start_positions(run_start: torch.Tensor) -> torch.Tensor:
    """(B, T) bool -> (B, T) long: for each token, the position of the latest run start at or before it."""
    pos = torch.arange(run_start.shape[1], device=run_start.device).expand_as(run_start)
    return torch.where(run_start, pos, torch.zeros_like(pos)).cummax(-1).values


def _pad_images(rows, lengths, windows, start_pos, inputs: CasaInputs) -> CasaInputs:
    """Flatten each row's images into (B, I, D) with their window ids and window-start positions."""
    B, I = len(rows), max(lengths)
    ref = next(f for f, _ in rows if f is not None)
    tokens = ref.new_zeros(B, I, ref.shape[-1])  # (B, I, D)
    img_windows = windows.new_zeros(B, I)
    img_start = windows.new_zeros(B, I)
    for b, (feats, pos) in enumerate(rows):
        if feats is None or feats.shape[0] == 0:
            continue
        n, N = feats.shape[:2]
        tokens[b, : n * N] = feats.reshape(n * N, -1)
        img_windows[b, : n * N] = windows[b, pos].repeat_interleave(N)
        img_start[b, : n * N] = start_pos[b, pos].repeat_interleave(N)
    inputs.image_tokens, inputs.image_windows, inputs.image_start = tokens, img_windows, img_start
    return inputs


@dataclass
class LayerCache:
    """What one CASA layer keeps between calls: the current window's keys (images + text so far)."""

    keys: torch.Tensor | None = None
    """(B, Hkv, K, hd) post-RoPE keys of the current window, left-padded."""
    values: torch.Tensor | None = None
    windows: torch.Tensor | None = None
    """(B, K) long window id of each kept key; 0 = padding."""
    index: torch.Tensor | None = None
    """(B, K) long sequence index of each kept key."""
    last_window: torch.Tensor | None = None
    """(B,) long: the window new text tokens belong to when no CasaInputs is given."""
    next_index: torch.Tensor | None = None
    """(B,) long: sequence index of the next token."""

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values) if t is not None)

    def continuation(self, T: int) -> CasaInputs:
        """Inputs for T new text tokens that continue the current window (a generate decode step)."""
        steps = torch.arange(T, device=self.next_index.device)
        index = self.next_index.unsqueeze(-1) + steps  # (B, T)
        return CasaInputs(self.last_window.unsqueeze(-1).expand_as(index).clone(), index)

    def reorder(self, order: torch.Tensor) -> None:
        for name in ("keys", "values", "windows", "index", "last_window", "next_index"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, order.to(t.device)))


class CasaCache(DynamicCache):
    """A transformers DynamicCache that also carries the CASA layers' window caches.

    `pending` holds the CasaInputs of the prompt for `generate`: each CASA layer uses it on its first
    call (prefill), then continues the current window on later calls (decode steps).
    """

    def __init__(self, *args, pending: CasaInputs | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending = pending
        self.casa_layers: dict[int, LayerCache] = {}

    def layer(self, idx: int) -> LayerCache:
        return self.casa_layers.setdefault(idx, LayerCache())

    def casa_nbytes(self) -> int:
        return sum(c.nbytes() for c in self.casa_layers.values())

    def reorder_cache(self, beam_idx: torch.Tensor):
        super().reorder_cache(beam_idx)
        for c in self.casa_layers.values():
            c.reorder(beam_idx)


__all__ = ["CasaInputs", "LayerCache", "CasaCache", "build_inputs", "marker_windows"]
