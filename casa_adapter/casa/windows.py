"""Windows: what a forward call tells the CASA layers.

`CasaInputs` is the one channel by which images reach the CASA layers: the model builds it
from `input_ids` (image markers) and the projected image tokens, and passes it down the HF
forward as the keyword argument `casa_inputs`. It also hands the layers their `KeyLayout`, made
once per call (and per key structure), so the kernels' plans are shared by all CASA layers of a
forward. What the layers keep between calls is in `casa_adapter.casa.cache`.

Window rule (see docs/architecture.md): a run of consecutive image markers opens a window that
holds those images; the run's first marker is the window start. Text before the first marker of
a sample is in window 0 (no CASA contribution). Window ids are unique within a row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from casa_adapter.casa.kernels.layout import KeyLayout


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
    text_gist: torch.Tensor | None = None
    """(B, T) bool: the gist tokens of `CasaSettings.history="gist"` (the image markers); None = none."""
    _layouts: dict = field(default_factory=dict, repr=False)

    @property
    def has_images(self) -> bool:
        return self.image_tokens is not None and self.image_tokens.shape[1] > 0

    def expand(self, n: int) -> CasaInputs:
        """Repeat each row n times (num_beams / num_return_sequences)."""
        rep = lambda t: None if t is None else t.repeat_interleave(n, dim=0)
        return CasaInputs(
            rep(self.text_windows),
            rep(self.text_index),
            rep(self.image_tokens),
            rep(self.image_windows),
            rep(self.image_start),
            rep(self.text_gist),
        )

    def derived(self, name, build: Callable[[], Any]) -> Any:
        """`build()`, computed once per call and kept under `name` (a plan every CASA layer shares)."""
        if name not in self._layouts:
            self._layouts[name] = build()
        return self._layouts[name]

    def key_layout(
        self,
        cached: tuple[torch.Tensor, torch.Tensor] | None,
        text_keys: bool,
        history: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> KeyLayout:
        """The `KeyLayout` of keys [cached ; this call's images ; history ; this call's text if `text_keys`] for
        this call's text queries. cached: (windows, index), each (B, Kc), of a layer's window cache, or None;
        history: (windows, index) (B, Kh) of the gist-history keys (`casa.history`), or None.

        Made once per call and key structure, then shared: every CASA layer of a model keeps the same
        window cache (same tokens, same rule), so the cached key count identifies the cached layout."""
        key = (None if cached is None else cached[0].shape[1], text_keys, None if history is None else history[0].shape)
        if key not in self._layouts:
            parts = [cached] if cached is not None else []
            if self.has_images:
                parts.append((self.image_windows, self.text_index.gather(1, self.image_start)))  # (B, I) x2
            if history is not None:
                parts.append(history)
            if text_keys:
                parts.append((self.text_windows, self.text_index))
            self._layouts[key] = KeyLayout(
                self.text_windows,
                self.text_index,
                torch.cat([w for w, _ in parts], 1),
                torch.cat([i for _, i in parts], 1),
            )  # keys (B, K)
        return self._layouts[key]


def marker_windows(
    input_ids: torch.Tensor,
    image_token_id: int,
    attention_mask: torch.Tensor | None = None,
    sample_ids: torch.Tensor | None = None,
    first_window: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
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


def build_inputs(
    input_ids: torch.Tensor,
    image_token_id: int,
    image_features: list[torch.Tensor | None],
    attention_mask: torch.Tensor | None = None,
    sample_ids: torch.Tensor | None = None,
    first_window: int = 1,
    first_index: int = 0,
) -> CasaInputs:
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
    inputs = CasaInputs(windows, index, text_gist=markers & (windows > 0))
    if max(lengths, default=0) == 0:
        return inputs
    return _pad_images(rows, lengths, windows, start_pos, inputs)


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


__all__ = ["CasaInputs", "build_inputs", "marker_windows"]
