"""What the CASA layers keep between calls of `generate` and of a streaming session.

Each CASA layer keeps a `LayerCache`: the current window's keys and values (its images and its
text so far), never those of closed windows. The layers' caches travel inside a `CasaCache`, a
transformers `DynamicCache` (so it reaches every attention call as the model's cache argument)
that also holds the prompt's `CasaInputs` for the first call of `generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from casa_adapter.casa.kernels.layout import KeyLayout
from casa_adapter.casa.windows import CasaInputs

ROW_FIELDS = (
    "keys",
    "values",
    "windows",
    "index",
    "last_window",
    "next_index",
    "gist_keys",
    "gist_values",
    "gist_windows",
)
"""The `LayerCache` fields that hold one entry per row (dimension 0)."""


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
    gist_keys: torch.Tensor | None = None
    """`history="gist"` only: (B, Hkv, G, hd) post-RoPE keys of the latest G <= history_size gist tokens
    (`casa.history`), left-padded; the history the next windows see."""
    gist_values: torch.Tensor | None = None
    gist_windows: torch.Tensor | None = None
    """(B, G) long window id of each kept gist; 0 = padding."""

    def advance(self, inputs: CasaInputs, seen: tuple[torch.Tensor, torch.Tensor, KeyLayout] | None) -> None:
        """After a call: keep only the keys of each row's current window, and where the next token continues.
        seen: the call's keys, values (B, Hkv, K, hd) and their `KeyLayout`, or None when the layer saw no key."""
        current = inputs.text_windows.max(-1).values  # (B,)
        self.last_window = current if self.last_window is None else torch.maximum(self.last_window, current)
        self.next_index = inputs.text_index[:, -1] + 1
        if seen is None:
            return
        k, v, layout = seen
        win, idx = layout.k_window, layout.k_index  # (B, K)
        keep = (win == self.last_window.unsqueeze(-1)) & (win > 0)  # (B, K)
        n_keep = int(keep.sum(-1).max())
        order = torch.argsort(keep.int(), dim=-1, stable=True)[:, keep.shape[1] - n_keep :]  # (B, n_keep) kept last
        gather = order[:, None, :, None].expand(k.shape[0], k.shape[1], n_keep, k.shape[-1])
        self.keys, self.values = k.gather(2, gather), v.gather(2, gather)  # (B, Hkv, n_keep, hd)
        kept = keep.gather(1, order)
        self.windows = torch.where(kept, win.gather(1, order), torch.zeros_like(order))
        self.index = idx.gather(1, order)

    def nbytes(self) -> int:
        kept = (self.keys, self.values, self.gist_keys, self.gist_values)
        return sum(t.numel() * t.element_size() for t in kept if t is not None)

    def continuation(self, T: int) -> CasaInputs:
        """Inputs for T new text tokens that continue the current window (a generate decode step)."""
        steps = torch.arange(T, device=self.next_index.device)
        index = self.next_index.unsqueeze(-1) + steps  # (B, T)
        return CasaInputs(self.last_window.unsqueeze(-1).expand_as(index).clone(), index)

    def add_row(self) -> None:
        """One more row that holds no key yet (a session joining a batch of streams)."""
        for name in ROW_FIELDS:
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, torch.cat([t, t.new_zeros(1, *t.shape[1:])]))

    def reorder(self, order: torch.Tensor) -> None:
        for name in ROW_FIELDS:
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


__all__ = ["LayerCache", "CasaCache"]
