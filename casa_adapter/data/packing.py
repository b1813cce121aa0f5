"""Packing samples into rows under a token budget, and the batch format the model accepts.

Batch format (packed and `--no-packing` alike; B rows, T = longest row's text tokens):

- `input_ids` (B, T) long: the samples of a row one after another, then `pad_token_id`;
  each image is one `image_token_id` marker (images take no other text position).
- `labels` (B, T) long: the samples' labels; -100 on padding, outside assistant turns and on
  each sample's first token (so a row's loss never crosses from one sample into the next).
- `attention_mask` (B, T) long: 1 on real tokens, 0 on padding.
- `position_ids` (B, T) long: 0, 1, 2, ... restarting at each sample; 0 on padding.
- `sample_ids` (B, T) long: 1..k = which sample of the row a token belongs to, 0 = padding.
  No attention may cross samples: the model builds its masks and windows from this.
- `images`: a list over rows of (n_images_in_row, 3, H, W) tensors in marker order
  ((0, 3, H, W) for a row without images), or None when no row of the batch has images
  (the `Processor.collate` convention).

Packing is greedy and keeps order: a row takes samples while text + `image_tokens` per image
stays within `max_tokens`; a batch is `rows` rows. `--no-packing` puts one sample in a row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch

from casa_adapter.data.decode import Sample
from casa_adapter.processor import IGNORE_INDEX

Item = TypeVar("Item")
BATCH_KEYS = ("input_ids", "labels", "attention_mask", "position_ids", "sample_ids", "images")


def pack_rows(
    items: Iterable[Item], cost: Callable[[Item], int], max_tokens: int, packing: bool = True
) -> Iterator[list[Item]]:
    """Group items, in order, into rows: greedy while the summed `cost` stays within `max_tokens`
    (packing), or one item per row."""
    row: list[Item] = []
    used = 0
    for item in items:
        item_cost = cost(item)
        if row and (not packing or used + item_cost > max_tokens):
            yield row
            row, used = [], 0
        row.append(item)
        used += item_cost
    if row:
        yield row


def collate_rows(rows: list[list[Sample]], pad_token_id: int) -> dict:
    """Rows of samples -> the batch dict documented in the module docstring."""
    width = max(sum(len(s.input_ids) for s in row) for row in rows)
    batch = {
        "input_ids": torch.full((len(rows), width), pad_token_id, dtype=torch.long),  # (B, T)
        "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),  # (B, T)
        "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),  # (B, T)
        "position_ids": torch.zeros((len(rows), width), dtype=torch.long),  # (B, T)
        "sample_ids": torch.zeros((len(rows), width), dtype=torch.long),  # (B, T)
    }
    for b, row in enumerate(rows):
        start = 0
        for k, sample in enumerate(row, start=1):
            end = start + len(sample.input_ids)
            batch["input_ids"][b, start:end] = sample.input_ids
            batch["labels"][b, start:end] = sample.labels
            batch["attention_mask"][b, start:end] = 1
            batch["position_ids"][b, start:end] = torch.arange(end - start)
            batch["sample_ids"][b, start:end] = k
            start = end
    batch["images"] = _row_images(rows)
    return batch


def _row_images(rows: list[list[Sample]]) -> list[torch.Tensor] | None:
    stacks = [[s.images for s in row if s.images is not None and len(s.images)] for row in rows]
    shape = next((parts[0].shape[1:] for parts in stacks if parts), None)
    if shape is None:
        return None
    # numpy's single-threaded copy: torch.cat of this size goes multi-threaded, and in a process that also
    # runs a tokenizer's thread pool (num_workers=0) that was measured up to 100x slower
    return [
        torch.from_numpy(np.concatenate([p.numpy() for p in parts])) if parts else torch.zeros((0, *shape))
        for parts in stacks
    ]  # (n_row, 3, H, W)


def unpack_row(batch: dict, row: int, image_token_id: int) -> list[dict]:
    """The samples of one batch row: `input_ids`, `labels` (T_k,) and `images` ((n_k, 3, H, W) or None)."""
    ids = batch["sample_ids"][row]
    images = None if batch["images"] is None else batch["images"][row]
    out, first_image = [], 0
    for k in range(1, int(ids.max()) + 1):
        where = ids == k
        input_ids = batch["input_ids"][row][where]
        n = int((input_ids == image_token_id).sum())
        mine = images[first_image : first_image + n] if images is not None and n else None
        out.append({"input_ids": input_ids, "labels": batch["labels"][row][where], "images": mine})
        first_image += n
    return out
