"""Gist history (`CasaSettings.history="gist"`): a window also sees a few keys of earlier windows.

A window's gist tokens are its image markers (`CasaInputs.text_gist`): the one text position each
image takes, the first queries of its window, which read the image in every CASA layer. With gist
history, the queries of window w see, beside w's images and text, the CASA keys/values of the
latest `size` gist tokens of windows before w (same row). They are ordinary keys of window w: each
is copied into w with w's window id and w's start index, so every query of w sees all of them and
every kernel reads them through the same `KeyLayout` rule, unchanged.

    keys of window w = [w's images ; gists of windows < w (latest `size`) ; w's text up to the query]

In one forward the gists come from the call's own text keys; in `generate` and streaming each
layer's `LayerCache` keeps the latest `size` gist keys (`gist_keys`, ...), so the state stays
bounded by `size`, not by the number of frames, and streaming equals the full forward.

`plan` says, once per call for all CASA layers, which candidate (kept gist or this call's text
token) each history key of each window opened in this call copies; `gather` applies it to one
layer's keys; `keep_latest` updates a layer's kept gists after the call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HistoryPlan:
    """Which candidate each history key copies. B rows, Wn windows opened in the call, `size` keys each."""

    select: torch.Tensor
    """(B, Wn * size) long: index into the candidates [kept gists (G) ; the call's text (T)]."""
    windows: torch.Tensor
    """(B, Wn * size) long: the window the copy belongs to; 0 where the window has fewer gists to see."""
    index: torch.Tensor
    """(B, Wn * size) long: sequence index the copy carries in the layout (its window's start)."""


def candidates(kept: torch.Tensor | None, text_windows: torch.Tensor, text_gist: torch.Tensor | None) -> torch.Tensor:
    """The window id of every candidate gist, in sequence order: a layer's kept gists (`kept`, (B, G) window ids,
    or None), then the call's text tokens (B, T). 0 = not a gist. Returns (B, G + T)."""
    gist = torch.zeros_like(text_windows, dtype=torch.bool) if text_gist is None else text_gist
    windows = torch.where(gist & (text_windows > 0), text_windows, torch.zeros_like(text_windows))  # (B, T)
    return windows if kept is None else torch.cat([kept, windows], 1)  # (B, G + T)


def plan(
    cand_windows: torch.Tensor, text_windows: torch.Tensor, text_index: torch.Tensor, opened: torch.Tensor, size: int
) -> HistoryPlan:
    """The history keys of the windows opened in this call.

    cand_windows (B, C): window id of each candidate gist (0: none), in sequence order; text_windows,
    text_index (B, T): the call's queries; opened (B, Wn): the windows whose images are in this call
    (0: padding). A window sees the latest `size` candidates of windows before it."""
    B, Wn = opened.shape
    eligible = (cand_windows.unsqueeze(1) > 0) & (cand_windows.unsqueeze(1) < opened.unsqueeze(-1))  # (B, Wn, C)
    later = eligible.flip(-1).cumsum(-1).flip(-1)  # (B, Wn, C): eligible candidates at or after each one
    keep = eligible & (later <= size)
    n = min(size, keep.shape[-1])
    order = torch.argsort(keep.int(), dim=-1, stable=True)[..., keep.shape[-1] - n :]  # (B, Wn, n), kept last
    valid = keep.gather(-1, order) & (opened.unsqueeze(-1) > 0)  # (B, Wn, n)
    in_window = text_windows.unsqueeze(1) == opened.unsqueeze(-1)  # (B, Wn, T)
    big = torch.iinfo(text_index.dtype).max
    start = torch.where(in_window, text_index.unsqueeze(1), big).min(-1).values  # (B, Wn): the window's first index
    windows = torch.where(valid, opened.unsqueeze(-1), 0)  # (B, Wn, n)
    index = torch.where(valid, start.unsqueeze(-1), 0)
    return HistoryPlan(order.reshape(B, Wn * n), windows.reshape(B, Wn * n), index.reshape(B, Wn * n))


def opened_windows(image_windows: torch.Tensor) -> torch.Tensor:
    """(B, I) window id of each image token -> (B, Wn) the distinct windows per row (0-padded, ascending)."""
    rows = [torch.unique(w[w > 0]) for w in image_windows]
    width = max((r.numel() for r in rows), default=0)
    out = image_windows.new_zeros(image_windows.shape[0], width)
    for b, r in enumerate(rows):
        out[b, : r.numel()] = r
    return out


def gather(keys: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
    """keys (B, Hkv, C, hd) of the candidates -> (B, Hkv, S, hd) at `select` (B, S)."""
    B, H, _, hd = keys.shape
    return keys.gather(2, select[:, None, :, None].expand(B, H, select.shape[1], hd))


def keep_latest(
    keys: torch.Tensor, values: torch.Tensor, windows: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The latest `size` gists per row among candidates keys, values (B, Hkv, C, hd) with windows (B, C)
    (0: not a gist), left-padded: keys, values (B, Hkv, n, hd) and windows (B, n), n <= size."""
    valid = windows > 0
    later = valid.flip(-1).cumsum(-1).flip(-1)  # (B, C)
    keep = valid & (later <= size)
    n = int(keep.sum(-1).max()) if keep.numel() else 0
    order = torch.argsort(keep.int(), dim=-1, stable=True)[:, keep.shape[1] - n :]  # (B, n), kept last
    return gather(keys, order), gather(values, order), torch.where(keep.gather(1, order), windows.gather(1, order), 0)


__all__ = ["HistoryPlan", "candidates", "plan", "opened_windows", "gather", "keep_latest"]
