"""The windowed kernel's plan: query chunks per (row, window) laid out as padded block buckets.

`plan_windows` computes, from a `KeyLayout` alone (no q/k/v), where every slot of every padded block
reads its query or key:

1. `chunk_windows` groups queries and keys by (row, window). A window's queries are cut into chunks
   of at most `CHUNK` tokens; a chunk reads the window's keys sorted by sequence index, up to the
   last index of the chunk (so long text windows do not pay for a full square causal block).
   Windows without queries are dropped; queries without any key get exactly zero.
2. Chunks are sorted by size and cut into buckets whose padded area stays under `SLACK` times the
   real one; a bucket is one block batch (n, H, Lq, Lk) with a small mask from the index comparison
   (that is the bottom-right causal alignment: a query sees its window's image keys and the
   window's text up to itself). Padding carries index `_BIG`, so it needs no extra mask pass.

The bookkeeping reads chunk sizes on the host (one sync per plan), as any varlen kernel does. A plan
is made once per `KeyLayout` (`KeyLayout.derived`), so all CASA layers of a forward share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from casa_adapter.casa.kernels.layout import KeyLayout

SLACK = 1.1
"""A bucket may compute at most this many times the query/key pairs of its chunks' blocks."""
CHUNK = 256
"""Longest run of a window's queries in one block."""
_BIG = 2**40
"""Index given to padding (padded queries see every real key, padded keys no query); also the stride
that turns (window, index) into one sortable number."""


@dataclass
class Chunks:
    """G query chunks: where their queries are, and the prefix of their window's index-sorted keys they read."""

    q_members: torch.Tensor
    """(Nq,) flat query positions b * Tq + t, chunk after chunk."""
    q_start: torch.Tensor
    """(G,) offset of each chunk in `q_members`."""
    lq: torch.Tensor
    """(G,) queries per chunk."""
    q_lo: torch.Tensor
    """(G,) smallest query index of each chunk."""
    k_members: torch.Tensor
    """(Nk,) flat key positions b * K + j, window after window, by sequence index inside a window."""
    k_start: torch.Tensor
    """(G,) offset of the chunk's window in `k_members`."""
    lk: torch.Tensor
    """(G,) keys the chunk reads: its window's keys with index <= the chunk's last query index."""
    k_lo: torch.Tensor
    """(G,) smallest key index of the chunk's window (`_BIG` when it has none)."""
    k_hi: torch.Tensor
    """(G,) largest index among the keys the chunk reads."""


@dataclass
class WindowPlan:
    """Where each slot of each padded block reads its query or key. Buckets follow one another; inside
    a bucket of shape (n chunks, Lq, Lk) slots are stored chunk by chunk. Padding slots read token 0."""

    q_slots: torch.Tensor
    """(Nq,) long: flat query b * Tq + t of every query slot (Nq = sum of n * Lq)."""
    k_slots: torch.Tensor
    """(Nk,) long: flat key b * K + j of every key slot (Nk = sum of n * Lk)."""
    keep: torch.Tensor
    """(Nq,) bool: the slot holds a real query with at least one allowed key; the others give exactly 0."""
    shapes: list[tuple[int, int, int]]
    """(n, Lq, Lk) of each bucket."""
    masks: list[torch.Tensor | None]
    """(n, 1, Lq, Lk) bool allowed pairs of each bucket (every row has one); None = all allowed."""
    q_index: list[torch.Tensor]
    """(n, Lq) long sequence index of each bucket's query slots (padding: `_BIG`), for the score modifiers."""
    k_index: list[torch.Tensor]
    """(n, Lk) long sequence index of each bucket's key slots (padding: `_BIG + 1`)."""


def _group(window: torch.Tensor, index: torch.Tensor, span: int):
    """(B, T) window ids and indices -> flat positions of tokens in a window (N,), group b * span + w, index."""
    T = window.shape[1]
    flat = window.reshape(-1)  # (B*T,)
    pos = (flat > 0).nonzero().squeeze(-1)  # (N,)
    return pos, torch.div(pos, T, rounding_mode="floor") * span + flat[pos], index.reshape(-1)[pos]


def chunk_windows(layout: KeyLayout, chunk: int) -> Chunks | None:
    """Query chunks of every (row, window) and their key prefixes; None when no window has both queries and keys."""
    q_window, q_index, k_window, k_index = layout.q_window, layout.q_index, layout.k_window, layout.k_index
    span = max([int(w.max()) for w in (q_window, k_window) if w.numel()], default=0) + 1
    (q_pos, q_gid, qi), (k_pos, k_gid, ki) = _group(q_window, q_index, span), _group(k_window, k_index, span)
    groups, q_group = torch.unique(q_gid, return_inverse=True)  # (W,), (Nq,)
    if groups.numel() == 0:
        return None
    order = (q_group * _BIG + qi).argsort()  # queries by (window, index)
    q_group, q_pos, qi = q_group[order], q_pos[order], qi[order]
    sizes = torch.bincount(q_group, minlength=groups.numel())  # (W,)
    rank = torch.arange(q_pos.numel(), device=q_pos.device) - (sizes.cumsum(0) - sizes)[q_group]  # (Nq,)
    per = -(-int(sizes.max()) // chunk)  # most chunks in a window
    _, lq = torch.unique_consecutive(q_group * per + rank // chunk, return_counts=True)  # (G,)
    q_start = lq.cumsum(0) - lq
    parent = q_group[q_start]  # (G,) window of each chunk
    k_group = torch.searchsorted(groups, k_gid).clamp(max=groups.numel() - 1)  # (Nk,)
    k_in = groups[k_group] == k_gid  # keys of windows that have queries
    k_sort, order = (k_group[k_in] * _BIG + ki[k_in]).sort()  # keys by (window, index)
    if k_sort.numel() == 0:
        return None
    k_start = torch.searchsorted(k_sort, parent * _BIG)  # (G,)
    k_end = torch.searchsorted(k_sort, parent * _BIG + qi[q_start + lq - 1], right=True)  # (G,)
    has = k_start < torch.searchsorted(k_sort, (parent + 1) * _BIG)  # (G,) the window has keys
    last = k_sort.numel() - 1
    k_lo = torch.where(has, k_sort[k_start.clamp(max=last)] - parent * _BIG, _BIG)  # (G,)
    k_hi = k_sort[(k_end - 1).clamp(0, last)] - parent * _BIG  # (G,)
    return Chunks(q_pos, q_start, lq, qi[q_start], k_pos[k_in][order], k_start, k_end - k_start, k_lo, k_hi)


def _bucket_groups(lq: list[int], lk: list[int], slack: float) -> list[list[int]]:
    """Greedy buckets over chunks sorted by (Lk, Lq) descending; chunks without keys are left out."""
    order = sorted((g for g in range(len(lq)) if lk[g] > 0), key=lambda g: (lk[g], lq[g]), reverse=True)
    buckets: list[list[int]] = []
    real = max_q = 0
    for g in order:
        grow_q, grow_real = max(max_q, lq[g]), real + lq[g] * lk[g]
        if buckets and (len(buckets[-1]) + 1) * grow_q * lk[buckets[-1][0]] <= slack * grow_real:
            buckets[-1].append(g)
            real, max_q = grow_real, grow_q
        else:
            buckets.append([g])
            real, max_q = lq[g] * lk[g], lq[g]
    return buckets


def _slots(g: torch.Tensor, members, start, sizes, width: int, index: torch.Tensor, pad_index: int):
    """Chunks g (n,) padded to `width`: flat positions (n, width), validity (n, width), sequence indices."""
    offs = torch.arange(width, device=members.device)  # (width,)
    valid = offs < sizes[g].unsqueeze(-1)  # (n, width)
    at = (start[g].unsqueeze(-1) + offs).clamp(max=members.numel() - 1)  # (n, width)
    slots = torch.where(valid, members[at], 0)  # (n, width)
    return slots, valid, torch.where(valid, index[slots], pad_index)


def plan_windows(layout: KeyLayout, slack: float | None = None, chunk: int | None = None) -> WindowPlan | None:
    """Lay the query chunks of `layout` out as padded buckets; None when no query has a key.
    `slack` and `chunk` default to the module's `SLACK` and `CHUNK` at call time. No gradient flows here."""
    slack, chunk = slack or SLACK, chunk or CHUNK
    c = chunk_windows(layout, chunk)
    if c is None:
        return None
    q_index, k_index = layout.q_index.reshape(-1), layout.k_index.reshape(-1)
    lq_host, lk_host = c.lq.tolist(), c.lk.tolist()
    q_slots, k_slots, keeps, shapes, masks, q_indices, k_indices = [], [], [], [], [], [], []
    for gs in _bucket_groups(lq_host, lk_host, slack):
        g, Lq, Lk = torch.tensor(gs, device=c.lq.device), max(lq_host[i] for i in gs), lk_host[gs[0]]
        q_sl, q_ok, qi = _slots(g, c.q_members, c.q_start, c.lq, Lq, q_index, _BIG)  # (n, Lq)
        k_sl, _, ki = _slots(g, c.k_members, c.k_start, c.lk, Lk, k_index, _BIG + 1)  # (n, Lk)
        keep = q_ok & (qi >= c.k_lo[g].unsqueeze(-1))  # (n, Lq) real queries that see at least one key
        full = all(lq_host[i] == Lq and lk_host[i] == Lk for i in gs) and bool((c.k_hi[g] <= c.q_lo[g]).all())
        masks.append(None if full else (ki.unsqueeze(1) <= torch.where(keep, qi, _BIG).unsqueeze(2)).unsqueeze(1))
        shapes.append((len(gs), Lq, Lk))
        q_slots.append(q_sl.reshape(-1))
        k_slots.append(k_sl.reshape(-1))
        keeps.append(keep.reshape(-1))
        q_indices.append(qi)
        k_indices.append(ki)
    if not shapes:
        return None
    return WindowPlan(torch.cat(q_slots), torch.cat(k_slots), torch.cat(keeps), shapes, masks, q_indices, k_indices)


__all__ = ["Chunks", "WindowPlan", "chunk_windows", "plan_windows", "SLACK", "CHUNK"]
