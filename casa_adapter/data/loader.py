"""`BatchLoader`: the iterable the trainer reads; counts bad samples and keeps the resumable position.

It wraps a `DataLoader` over a `BatchStream` (batch_size=None: workers build whole batches),
strips each batch's `_meta` into the `BadSampleCounter` and, for training, into the position:

    state = {batches consumed, {slot: draw index of the slot's next batch}, counts,
             {slot: {streamed source: (epoch, shard, offset)}}}

Lightning saves it with the checkpoint (`state_dict` / `load_state_dict`, the `_Stateful`
protocol of its fit loop) and restores it before the first `iter()`; iteration then restarts
every slot at its position and rotates the workers so that batch n still comes from slot
n mod W (the DataLoader serves workers round-robin). Under DDP `state_dict` gathers every
rank's state (Lightning calls it on all ranks), and each rank loads its own.

A training loader has a length (`batches_per_epoch`): each `iter()` yields the rest of the
current Lightning epoch, and the stream continues across epochs. So Lightning does not
prefetch past what it consumed, and the saved position is exactly what was trained on.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch.distributed as dist
from torch.utils.data import DataLoader

from casa_adapter.data.counters import BadSampleCounter
from casa_adapter.data.dataset import BatchStream


class BatchLoader:
    """Batches for the trainer; `state_dict` / `load_state_dict` make a training run resumable."""

    def __init__(self, stream: BatchStream, epoch_batches: int | None = None) -> None:
        if stream.train and not epoch_batches:
            raise ValueError("a training loader needs epoch_batches >= 1 (its stream never ends)")
        self.stream, self.epoch_batches = stream, epoch_batches
        self.workers = stream.settings.num_workers
        self.loader = DataLoader(stream, batch_size=None, num_workers=self.workers)
        self.counter = BadSampleCounter()
        self.batches = 0
        self.positions: dict[int, int] = {}
        self.streams: dict[int, dict] = {}

    def __len__(self) -> int:
        if self.epoch_batches is None:
            raise TypeError("an evaluation loader has no length (bad samples are only known once read)")
        return self.epoch_batches

    def __iter__(self) -> Iterator[dict]:
        self.stream.start_positions = dict(self.positions) if self.stream.train else {}
        self.stream.start_streams = dict(self.streams) if self.stream.train else {}
        self.stream.rotation = self.batches % max(1, self.workers) if self.stream.train else 0
        batches = iter(self.loader)
        if self.epoch_batches is not None:
            batches = itertools.islice(batches, self.epoch_batches - self.batches % self.epoch_batches)
        settings = self.stream.settings
        for batch in batches:
            meta = batch.pop("_meta")
            self.counter.add_batch_meta(meta)
            if self.stream.train:
                self.positions[meta["slot"]] = meta["position"]
                self.streams[meta["slot"]] = meta["streams"]
                self.batches += 1
            self.counter.check(settings.max_bad_fraction, settings.min_samples_before_failing)
            if batch:  # an evaluation stream ending in bad samples sends their meta alone: counted, not yielded
                yield batch

    def _local_state(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "positions": dict(self.positions),
            "streams": dict(self.streams),
            "workers": self.workers,
            "counter": self.counter.state_dict(),
        }

    def state_dict(self) -> dict[str, Any]:
        """{"ranks": {rank: state}}, with every rank's state under DDP."""
        local = (self.stream.rank, self._local_state())
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, local)
        else:
            gathered = [local]
        return {"world_size": self.stream.world_size, "ranks": dict(gathered)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore this rank's position and counts; a different world size or worker count is an error
        (the order depends on the number of slots, so the run could not continue exactly)."""
        mine = state["ranks"].get(self.stream.rank)
        if state["world_size"] != self.stream.world_size or mine is None:
            saved = f"world size {state['world_size']} (ranks {sorted(state['ranks'])})"
            raise ValueError(
                f"loader state saved with {saved} cannot resume rank {self.stream.rank} of {self.stream.world_size}"
            )
        if mine["workers"] != self.workers:
            raise ValueError(
                f"loader state saved with num_workers={mine['workers']}, this run has {self.workers}: "
                "the sample order depends on it, so resume with the same num_workers"
            )
        self.batches, self.positions = mine["batches"], dict(mine["positions"])
        self.streams = dict(mine.get("streams", {}))  # absent from states saved before streamed sources
        self.counter.load_state_dict(mine["counter"])
