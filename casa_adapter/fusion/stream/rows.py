"""Rows of a shared session cache: add one, keep some, and squeeze out the holes.

Sessions decoded together share one transformers cache with a row per session. Rows fill at
different rates, so the self-attention cache has holes (padding of shorter chunks, evicted windows),
masked out by the step's attention mask. `compact` moves each row's kept positions to the end
(left padding) and drops the columns no row needs. The CASA layers' window caches (`LayerCache`)
compact themselves after every call; here they only gain or lose rows. A hybrid's recurrent states
(`recurrent`) have no slots: they too only gain or lose rows.
"""

from __future__ import annotations

import torch

from casa_adapter.casa.cache import CasaCache
from casa_adapter.fusion.stream import recurrent


def kv_layers(cache) -> list:
    """The cache's self-attention layers that hold tensors (B, H, L, hd) already."""
    return [
        layer
        for layer in getattr(cache, "layers", [])
        if isinstance(getattr(layer, "keys", None), torch.Tensor) and layer.keys.ndim == 4
    ]


def has_sliding_layers(cache) -> bool:
    """Whether some layer keeps only a sliding window of slots (its slots cannot be moved or shared)."""
    return any(getattr(layer, "is_sliding", False) for layer in getattr(cache, "layers", []))


def solo_reason(cache, model_type: str) -> str | None:
    """Why sessions over this cache cannot share a batch (one session at a time), or None when they can."""
    if has_sliding_layers(cache):
        return (
            f"{model_type} has sliding-window cache layers: its sessions cannot share a batch "
            "(holes would shorten the window)"
        )
    unshareable = recurrent.unshareable_kinds(cache)
    if unshareable:
        return (
            f"{model_type}'s cache has layers of kinds {unshareable}, whose rows StreamBatch cannot keep apart: "
            "its sessions cannot share a batch"
        )
    return None


def add_row(cache) -> None:
    """One more row, all holes (recurrent states: zeros), in every layer that holds tensors already."""
    for layer in kv_layers(cache):
        layer.keys = torch.cat([layer.keys, layer.keys.new_zeros(1, *layer.keys.shape[1:])])
        layer.values = torch.cat([layer.values, layer.values.new_zeros(1, *layer.values.shape[1:])])
    recurrent.add_row(cache)
    if isinstance(cache, CasaCache):
        for layer_cache in cache.casa_layers.values():
            layer_cache.add_row()


def keep_rows(cache, rows: torch.Tensor) -> None:
    """Keep these rows (1D long), in this order, in every layer (self-attention, recurrent and CASA)."""
    for layer in kv_layers(cache):
        layer.keys, layer.values = layer.keys.index_select(0, rows), layer.values.index_select(0, rows)
    recurrent.keep_rows(cache, rows)
    if isinstance(cache, CasaCache):
        for layer_cache in cache.casa_layers.values():
            layer_cache.reorder(rows)


def compact(cache, slots: torch.Tensor) -> torch.Tensor:
    """Move each row's kept slots to the end, in order, and drop the rest of the columns.

    slots (B, L) long: window id of each slot, -1 = hole. Returns the new slots (B, L'), L' = most kept
    in a row. Only for caches without sliding layers (their length is not L)."""
    kept = slots >= 0  # (B, L)
    n_keep = int(kept.sum(-1).max())
    order = torch.argsort(kept.int(), dim=-1, stable=True)[:, slots.shape[1] - n_keep :]  # (B, L') kept last
    for layer in kv_layers(cache):
        B, H, _, hd = layer.keys.shape
        at = order[:, None, :, None].expand(B, H, n_keep, hd).to(layer.keys.device)
        layer.keys, layer.values = layer.keys.gather(2, at), layer.values.gather(2, at)
    return torch.where(kept.gather(1, order), slots.gather(1, order), torch.full_like(order, -1))


__all__ = ["add_row", "keep_rows", "compact", "has_sliding_layers", "solo_reason"]
