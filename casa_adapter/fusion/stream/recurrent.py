"""Recurrent rows of a shared session cache: the states of a hybrid's mamba, delta-net and short-conv layers.

A hybrid base (Bamba, Jamba, Nemotron-H, Qwen3-Next, Qwen3.5, OLMo-hybrid, LFM2-MoE) keeps, beside its
attention layers' KV slots, one state per row in each non-attention layer: transformers'
`LinearAttentionLayer`, whose `conv_states` (B, C, kernel) hold the last inputs of a causal convolution and
whose `recurrent_states` (an SSM's or a delta rule's (B, H, ...)) sum everything seen. Such a state has no
slots to mask: a padding token run through the layer moves it (the convolution state ends on the pads, the
SSM state decays through them), even where the mixer zeroes padded inputs. So `StreamBatch` never pads a
row that it keeps: rows are fed in forwards of one chunk length each, and every row not fed in a forward
gets its state back as it was before it (`snapshot` / `restore`). The KV layers see those rows as holes.

Some mixers cannot continue a state over several positions at all: Jamba's and Zamba's mamba layers run a
multi-token input through transformers' `mamba_selective_scan`, which takes no initial state (only their
one-token decode step reads it), so a second multi-token call would start their SSM from zero. Sessions of
those families take any input on their first step, then one position per step (`ONE_POSITION_AFTER_FIRST`).

Cache layers of kinds not listed here (not KV, not recurrent, not a block without a cache) cannot be
shared by rows: `StreamBatch` runs one session per batch for them, as for sliding windows.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DummyLayer, DynamicLayer, DynamicSlidingWindowLayer, LinearAttentionCacheLayerMixin

KV_KINDS = (DynamicLayer, DynamicSlidingWindowLayer)
"""Layer classes whose whole state is keys and values (B, H, L, hd), handled by `rows`."""

ONE_POSITION_AFTER_FIRST = {"jamba": "JambaMambaMixer", "zamba": "ZambaMambaMixer"}
"""model_type -> its mamba mixer, whose multi-token form (transformers' `mamba_selective_scan`) starts from a
zero SSM state, ignoring the cached one: after a session's first step, one position per step is exact."""

State = list[torch.Tensor | None]
"""Every recurrent state tensor of a cache, in `state_slots` order (None: not initialised yet)."""


def recurrent_layers(cache) -> list[LinearAttentionCacheLayerMixin]:
    """The cache's layers that keep a recurrent state per row (convolution and / or SSM states)."""
    return [layer for layer in getattr(cache, "layers", []) if isinstance(layer, LinearAttentionCacheLayerMixin)]


def unshareable_kinds(cache) -> list[str]:
    """Class names of the cache's layers whose rows `StreamBatch` cannot keep apart (none: every row is safe)."""
    known = (LinearAttentionCacheLayerMixin, DummyLayer)
    kinds = {type(layer).__name__ for layer in getattr(cache, "layers", []) if not isinstance(layer, known)}
    return sorted(k for k in kinds if k not in {c.__name__ for c in KV_KINDS})


def continuation_limit(model_type: str) -> str | None:
    """Why sessions of this family take one position per step after their first, or None when they need not."""
    mixer = ONE_POSITION_AFTER_FIRST.get(model_type)
    if mixer is None:
        return None
    return (
        f"{model_type}'s {mixer} runs several positions from a zero SSM state (transformers' mamba_selective_scan "
        "takes no initial state), so a session continues one position per step after its first step"
    )


def state_slots(cache) -> list[tuple[dict, int]]:
    """(states dict, index) of every conv and recurrent state a recurrent layer may hold."""
    out = []
    for layer in recurrent_layers(cache):
        for i in range(layer.number_of_states):
            out += [(layer.conv_states, i), (layer.recurrent_states, i)]
    return out


def add_row(cache) -> None:
    """One more row, in its initial (zero) state, in every recurrent state that exists already."""
    for states, i in state_slots(cache):
        if states[i] is not None:
            states[i] = torch.cat([states[i], states[i].new_zeros(1, *states[i].shape[1:])])


def keep_rows(cache, rows: torch.Tensor) -> None:
    """Keep these rows (1D long), in this order, in every recurrent state."""
    for states, i in state_slots(cache):
        if states[i] is not None:
            states[i] = states[i].index_select(0, rows.to(states[i].device))


def snapshot(cache) -> State:
    """A copy of every recurrent state, to give rows not fed in a forward their state back."""
    return [None if states[i] is None else states[i].clone() for states, i in state_slots(cache)]


def restore(cache, before: State, fed: torch.Tensor) -> None:
    """Put back the state `before` in every row not fed (fed: (B,) bool); a state that did not exist before
    goes back to zeros there (the initial state)."""
    for (states, i), old in zip(state_slots(cache), before):
        new = states[i]
        if new is None:
            continue
        keep = fed.to(new.device).view(-1, *[1] * (new.ndim - 1))  # (B, 1, ...)
        new.copy_(torch.where(keep, new, torch.zeros_like(new) if old is None else old))


def row_bytes(cache) -> int:
    """Bytes of one row's recurrent states (every row holds as many)."""
    return sum(
        states[i][0].numel() * states[i].element_size() for states, i in state_slots(cache) if states[i] is not None
    )


def nbytes(cache) -> int:
    """Bytes of every row's recurrent states."""
    return sum(
        states[i].numel() * states[i].element_size() for states, i in state_slots(cache) if states[i] is not None
    )


__all__ = [
    "recurrent_layers",
    "unshareable_kinds",
    "add_row",
    "keep_rows",
    "snapshot",
    "restore",
    "row_bytes",
    "nbytes",
]
