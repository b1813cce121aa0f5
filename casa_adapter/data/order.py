"""Which sample comes next: deterministic, index-based sample orders per slot.

A *slot* is one independent reader: (rank, dataloader worker), `n_slots = world_size x
num_workers`. Every slot's stream of draws is a pure function of (seed, slot, n_slots, draw
index): this is what makes resume exact. A slot's position is one integer, the number of draws
it has made; restarting at that number reproduces the rest of the stream without reading
anything that came before.

Training (`MixtureStream`): draw i picks a source by weight (resampling, with its own seeded
generator per block of draws), then takes that source's next sample in the slot's order for
the source. A source's order is cut into epochs: each epoch shuffles the shard order (one
generator shared by all slots), then splits the work:

- by shard when there are at least as many shards as slots: each slot reads whole shards
  (WebDataset's split_by_node / split_by_worker), then shuffles within what it got;
- by sample (every n_slots-th sample of the shuffled sequence) when there are fewer shards.

The shuffle within a slot is `shuffle_buffer`: None shuffles fully (reads are random access),
an int B > 0 simulates a WebDataset shuffle buffer of B samples over the shard-ordered
sequence (reads stay near-sequential), 0 keeps the order.

Evaluation (`SequentialStream`): every source once, in order, split by sample.

Streamed sources (`streaming.py`) cannot be indexed ahead, so their split is always by shard
(`slot_shards`, the same permutation), and the shuffle stays within each shard
(`shard_sample_order`); their cursor's position is (epoch, shard, samples read in it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

_ORDER, _MIX = 0, 1  # generator namespaces
_BLOCK = 1024  # mixture draws made by one generator
_MAX_EMPTY_EPOCHS = 1000


def shuffled(seq: np.ndarray, rng: np.random.Generator, shuffle_buffer: int | None) -> np.ndarray:
    """`seq` fully shuffled (None), kept (0), or through a simulated shuffle buffer of that size."""
    if shuffle_buffer is None:
        return rng.permutation(seq)
    if shuffle_buffer <= 1 or len(seq) <= 1:
        return seq
    picks = rng.integers(0, shuffle_buffer, size=len(seq))
    buffer, out = list(seq[:shuffle_buffer]), []
    for value, pick in zip(seq[shuffle_buffer:], picks):
        out.append(buffer[pick])
        buffer[pick] = value
    tail = np.array(buffer, dtype=np.int64)
    rng.shuffle(tail)
    return np.concatenate([np.array(out, dtype=np.int64), tail])


def _shard_order(
    n_shards: int, seed: int, source: int, epoch: int, shuffle_buffer: int | None
) -> tuple[np.ndarray, np.random.Generator]:
    """The epoch's shard permutation (the same for every slot) and the shared generator after it."""
    shared = np.random.default_rng([seed, _ORDER, source, epoch])
    return (np.arange(n_shards) if shuffle_buffer == 0 else shared.permutation(n_shards)), shared


def slot_shards(
    n_shards: int, seed: int, source: int, epoch: int, slot: int, n_slots: int, shuffle_buffer: int | None
) -> np.ndarray:
    """The shards a slot reads whole in `epoch` (split by shard, as `epoch_order` with enough shards)."""
    return _shard_order(n_shards, seed, source, epoch, shuffle_buffer)[0][slot::n_slots]


def shard_sample_order(
    n_samples: int, seed: int, source: int, epoch: int, slot: int, shard: int, shuffle_buffer: int | None
) -> np.ndarray:
    """The order a slot reads a streamed shard's samples in (`shuffled` within the shard)."""
    rng = np.random.default_rng([seed, _ORDER, source, epoch, slot + 1, shard + 1])
    return shuffled(np.arange(n_samples, dtype=np.int64), rng, shuffle_buffer)


def epoch_order(
    shard_sizes: list[int], seed: int, source: int, epoch: int, slot: int, n_slots: int, shuffle_buffer: int | None
) -> np.ndarray:
    """The sample indices (into the source's shard-ordered list) this slot reads in `epoch`."""
    starts = np.concatenate([[0], np.cumsum(shard_sizes)]).astype(np.int64)
    shards, shared = _shard_order(len(shard_sizes), seed, source, epoch, shuffle_buffer)
    if len(shard_sizes) >= n_slots:
        mine = shards[slot::n_slots]
        seq = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in mine])
        return shuffled(seq, np.random.default_rng([seed, _ORDER, source, epoch, slot + 1]), shuffle_buffer)
    seq = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in shards])
    return shuffled(seq, shared, shuffle_buffer)[slot::n_slots]


class SourceCursor:
    """A slot's endless walk through one source's epochs, starting after `count` samples."""

    def __init__(
        self,
        shard_sizes: list[int],
        seed: int,
        source: int,
        slot: int,
        n_slots: int,
        shuffle_buffer: int | None,
        count: int = 0,
    ) -> None:
        self._order_args = (shard_sizes, seed, source)
        self._slot, self._n_slots, self._buffer = slot, n_slots, shuffle_buffer
        self.epoch, self._seq = -1, np.empty(0, dtype=np.int64)
        self._next_epoch()
        while count >= len(self._seq):
            count -= len(self._seq)
            self._next_epoch()
        self.offset = count

    def _next_epoch(self) -> None:
        for _ in range(_MAX_EMPTY_EPOCHS):
            self.epoch += 1
            self._seq = epoch_order(*self._order_args, self.epoch, self._slot, self._n_slots, self._buffer)
            if len(self._seq):
                return
        raise RuntimeError(f"slot {self._slot} of {self._n_slots} got no sample for {_MAX_EMPTY_EPOCHS} epochs")

    def next(self) -> int:
        if self.offset >= len(self._seq):
            self._next_epoch()
            self.offset = 0
        self.offset += 1
        return int(self._seq[self.offset - 1])


def mixture_choices(weights: list[float], seed: int, slot: int, block: int) -> np.ndarray:
    """Source of each draw in block `block` (draws block*1024 ... +1023) of a slot."""
    p = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    return np.random.default_rng([seed, _MIX, slot, block]).choice(len(p), size=_BLOCK, p=p)


class MixtureStream:
    """A slot's endless training stream over weighted sources; see the module docstring."""

    def __init__(
        self,
        shard_sizes: list[list[int]],
        weights: list[float],
        seed: int,
        slot: int,
        n_slots: int,
        shuffle_buffer: int | None,
    ) -> None:
        self.shard_sizes, self.weights, self.seed = shard_sizes, weights, seed
        self.slot, self.n_slots, self.shuffle_buffer = slot, n_slots, shuffle_buffer

    def source_counts(self, draws: int) -> np.ndarray:
        """How many of the first `draws` draws went to each source."""
        counts = np.zeros(len(self.weights), dtype=np.int64)
        for block in range(-(-draws // _BLOCK)):
            choices = mixture_choices(self.weights, self.seed, self.slot, block)
            counts += np.bincount(choices[: draws - block * _BLOCK], minlength=len(self.weights))
        return counts

    def draws(self, start: int = 0, streamed: dict[int, Any] | None = None) -> Iterator[tuple[int, int, Any]]:
        """(draw index, source, sample index) from draw `start` on, forever. A source in `streamed`
        (its shard sizes are None) has its own cursor, positioned by the caller: its draws give what
        the cursor's `next()` returns instead of a sample index."""
        streamed = streamed or {}
        counts = self.source_counts(start) if len(self.weights) > 1 else [start]
        cursors = [
            streamed[s]
            if s in streamed
            else SourceCursor(sizes, self.seed, s, self.slot, self.n_slots, self.shuffle_buffer, int(c))
            for s, (sizes, c) in enumerate(zip(self.shard_sizes, counts))
        ]
        draw = start
        while True:
            block, within = divmod(draw, _BLOCK)
            choices = mixture_choices(self.weights, self.seed, self.slot, block) if len(self.weights) > 1 else None
            for i in range(within, _BLOCK):
                source = 0 if choices is None else int(choices[i])
                yield draw, source, cursors[source].next()
                draw += 1


class SequentialStream:
    """A slot's share of every sample of every source, once, in order (evaluation)."""

    def __init__(self, shard_sizes: list[list[int]], slot: int, n_slots: int) -> None:
        self.totals = [int(sum(sizes)) for sizes in shard_sizes]
        self.slot, self.n_slots = slot, n_slots

    def draws(self, start: int = 0) -> Iterator[tuple[int, int, int]]:
        flat = [(s, i) for s, total in enumerate(self.totals) for i in range(total)]
        for draw, (source, index) in enumerate(flat[self.slot :: self.n_slots]):
            if draw >= start:
                yield draw, source, index
