"""Windowed CASA attention, and the keyword arguments that keep packed samples apart in the LLM.

`windowed_casa_attention` computes exactly what `attention.reference_casa_attention` computes (the
rule is in `casa_adapter.attention`) without ever forming the dense (Tq x K) mask of a row:

1. `plan_windows` groups queries and keys by (row, window). A window's queries are cut into chunks
   of at most `CHUNK` tokens; a chunk reads the window's keys sorted by sequence index, up to the
   last index of the chunk (so long text windows do not pay for a full square causal block).
   Windows without queries are dropped; queries without any key get exactly zero.
2. Chunks are sorted by size and cut into buckets whose padded area stays under `SLACK` times the
   real one; a bucket is one block batch (n, H, Lq, Lk) with a small mask from the index comparison
   (that is the bottom-right causal alignment: a query sees its window's image keys and the
   window's text up to itself). Padding carries index `_BIG`, so it needs no extra mask pass.
3. Each bucket runs one `scaled_dot_product_attention` (GQA through `enable_gqa`); the outputs are
   scattered back to their (row, token) places.

Only row gathers, SDPA and `index_put` touch q/k/v: the kernel is differentiable and works in
fp32/bf16/fp16 on CPU and CUDA. The bookkeeping reads chunk sizes on the host (one sync per call),
as any varlen kernel does.

`packed_llm_kwargs` is the packing side: see its docstring.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

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


def _group(window: torch.Tensor, index: torch.Tensor, span: int):
    """(B, T) window ids and indices -> flat positions of tokens in a window (N,), group b * span + w, index."""
    T = window.shape[1]
    flat = window.reshape(-1)  # (B*T,)
    pos = (flat > 0).nonzero().squeeze(-1)  # (N,)
    return pos, torch.div(pos, T, rounding_mode="floor") * span + flat[pos], index.reshape(-1)[pos]


def chunk_windows(q_window, q_index, k_window, k_index, chunk: int) -> Chunks | None:
    """Query chunks of every (row, window) and their key prefixes; None when no window has both queries and keys."""
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


def plan_windows(q_window, q_index, k_window, k_index, slack: float | None = None,
                 chunk: int | None = None) -> WindowPlan | None:
    """Lay the query chunks out as padded buckets. q_window, q_index (B, Tq); k_window, k_index (B, K) long.

    `slack` and `chunk` default to `SLACK` and `CHUNK`. None when no query has a key. No gradient flows here.
    """
    slack, chunk = slack or SLACK, chunk or CHUNK
    c = chunk_windows(q_window, q_index, k_window, k_index, chunk)
    if c is None:
        return None
    q_index, k_index = q_index.reshape(-1), k_index.reshape(-1)
    lq_host, lk_host = c.lq.tolist(), c.lk.tolist()
    q_slots, k_slots, keeps, shapes, masks = [], [], [], [], []
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
    if not shapes:
        return None
    return WindowPlan(torch.cat(q_slots), torch.cat(k_slots), torch.cat(keeps), shapes, masks)


_last_plan: list = []
"""[(key, plan)] of the last call. The CASA layers of one forward share one layout, so they share its plan."""


@torch.no_grad()
def shared_plan(q_window, q_index, k_window, k_index) -> WindowPlan | None:
    """`plan_windows` for this layout, reusing the last call's plan when the layout tensors are equal."""
    layout = (q_window, q_index, k_window, k_index)
    if _last_plan:
        (settings, old), plan = _last_plan[0]
        if settings == (SLACK, CHUNK) and all(
                a.shape == b.shape and a.device == b.device and torch.equal(a, b) for a, b in zip(old, layout)):
            return plan
    plan = plan_windows(*layout)
    _last_plan[:] = [(((SLACK, CHUNK), tuple(t.clone() for t in layout)), plan)]
    return plan


def clear_plan_cache() -> None:
    """Forget the shared plan (benchmarks time the planning with every call)."""
    _last_plan.clear()


def _gather_blocks(x: torch.Tensor, slots: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Blocks (n, h, L, hd) of x (B, h, T, hd) read at flat token slots (N,) (b * T + t); sizes = (n, L) per block."""
    B, h, T, hd = x.shape
    if x.transpose(1, 2).is_contiguous():  # token-major memory, as projections produce: rows need no copy
        rows, (sb, sh, st) = x.transpose(1, 2).reshape(-1, hd), (T * h, 1, h)  # (B*T*h, hd)
    else:
        rows, (sb, sh, st) = x.contiguous().view(-1, hd), (h * T, T, 1)  # (B*h*T, hd)
    with torch.no_grad():
        at = torch.div(slots, T, rounding_mode="floor") * sb + slots % T * st  # (N,)
        heads = torch.arange(h, device=x.device).view(1, h, 1) * sh  # (1, h, 1)
        parts = at.split([n * L for n, L in sizes])
        index = torch.cat([(p.view(n, 1, L) + heads).reshape(-1) for p, (n, L) in zip(parts, sizes)])
    blocks = rows.index_select(0, index).split([n * h * L for n, L in sizes])  # (sum n*h*L, hd)
    return [b.view(n, h, L, hd) for b, (n, L) in zip(blocks, sizes)]


def windowed_casa_attention(q, k, v, q_window, q_index, k_window, k_index, scaling: float) -> torch.Tensor:
    """CASA attention per window block. q (B, H, Tq, hd); k, v (B, Hkv, K, hd) -> (B, H, Tq, hd)."""
    B, H, Tq, hd = q.shape
    plan = shared_plan(q_window, q_index, k_window, k_index)
    if plan is None:
        return q.new_zeros(q.shape)
    q_sizes, k_sizes = [(n, lq) for n, lq, _ in plan.shapes], [(n, lk) for n, _, lk in plan.shapes]
    qs, ks, vs = (_gather_blocks(x, sl, sz) for x, sl, sz in
                  ((q, plan.q_slots, q_sizes), (k, plan.k_slots, k_sizes), (v, plan.k_slots, k_sizes)))
    with torch.no_grad():  # output row of each (chunk, head, slot); dropped slots go to the spare row B * Tq
        dest = torch.where(plan.keep, plan.q_slots, B * Tq).split([n * lq for n, lq in q_sizes])
        head = torch.arange(H, device=q.device).view(1, H, 1)
        dest = [(d.view(n, 1, lq) * H + head).reshape(-1) for d, (n, lq) in zip(dest, q_sizes)]
    out = q.new_zeros((B * Tq + 1) * H, hd)  # token-major rows, one spare token
    for qb, kb, vb, mask, at in zip(qs, ks, vs, plan.masks, dest):
        ob = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scaling, enable_gqa=H != k.shape[1])
        out = out.index_put_((at,), ob.reshape(-1, hd))  # ob (n, H, Lq, hd)
    return out[: B * Tq * H].view(B, Tq, H, hd).transpose(1, 2)  # (B, H, Tq, hd)


def packed_llm_kwargs(sample_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> dict:
    """Keyword arguments for the HF forward of a packed batch, so self-attention stays inside each sample.

    transformers (5.x) splits a row into independent sequences wherever `position_ids` do not step by one
    (`masking_utils.find_packed_sequence_indices`, used by the sdpa, eager and flex masks, sliding windows
    included; flash attention reads `position_ids` itself), but only when the call has no 2D
    `attention_mask` and no cache: with either, samples see each other. So a packed forward passes
    `attention_mask=None`, `use_cache=False` and per-sample `position_ids` (derived from `sample_ids`
    (B, T), 1..k per sample, 0 = padding, when not given). Raises ValueError when the given
    `position_ids` would merge two samples or split one.
    """
    starts = F.pad(sample_ids[:, 1:] != sample_ids[:, :-1], (1, 0), value=True)  # (B, T) first token of a run
    if position_ids is None:
        idx = torch.arange(sample_ids.shape[1], device=sample_ids.device).expand_as(sample_ids)  # (B, T)
        position_ids = idx - torch.where(starts, idx, torch.zeros_like(idx)).cummax(-1).values  # (B, T)
        position_ids = position_ids.masked_fill(sample_ids == 0, 0)
    step = F.pad(position_ids[:, 1:] - position_ids[:, :-1] == 1, (1, 0), value=False)  # (B, T) continues
    real = sample_ids > 0
    if bool(((step == starts) & real).any()):
        raise ValueError("position_ids must restart at each packed sample and step by one inside it "
                         "(transformers separates samples where position_ids do not step by one)")
    return {"attention_mask": None, "position_ids": position_ids, "use_cache": False}
