"""`BatchStream`: the IterableDataset each DataLoader worker runs (read -> decode -> pack -> batch).

Each worker is one slot of the deterministic order (`order.py`): slot = rank x W + local,
where local = (worker id + `rotation`) mod W. The loader sets `rotation` on resume so that the
DataLoader's round-robin over workers continues where it stopped. Every batch carries `_meta`:
its slot, the slot's position after it (the draw index of the first sample of the slot's next
batch), its good / truncated / per-source counts and the bad-sample events behind it. The
loader (`loader.py`) strips `_meta` before the batch reaches the model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from casa_adapter.data.chat import SampleError
from casa_adapter.data.counters import BadEvent
from casa_adapter.data.decode import Sample, encode, validate
from casa_adapter.data.order import MixtureStream, SequentialStream
from casa_adapter.data.packing import collate_rows, pack_rows
from casa_adapter.data.settings import DataSettings
from casa_adapter.data.shards import ShardReader, SourceIndex

_MIN_BAD_RUN = 1000
"""Consecutive bad draws (at least; or the whole data set) after which a slot gives up."""


class BatchStream(IterableDataset):
    """Batches of one rank's share of the data; see the module docstring."""

    def __init__(
        self,
        indexes: list[SourceIndex],
        weights: list[float],
        processor: Any,
        settings: DataSettings,
        train: bool,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.indexes, self.weights, self.processor, self.settings = indexes, weights, processor, settings
        self.train, self.rank, self.world_size = train, rank, world_size
        self.start_positions: dict[int, int] = {}
        """Slot -> draw index to start at (a resumed run)."""
        self.rotation = 0
        self.reader = ShardReader()

    def slot(self) -> tuple[int, int]:
        """(this worker's slot, number of slots)."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.rank * workers + (worker + self.rotation) % workers, self.world_size * workers

    def __iter__(self) -> Iterator[dict]:
        slot, n_slots = self.slot()
        sizes = [index.shard_sizes for index in self.indexes]
        if self.train:
            stream = MixtureStream(sizes, self.weights, self.settings.seed, slot, n_slots, self.settings.shuffle_buffer)
        else:
            stream = SequentialStream(sizes, slot, n_slots)
        return self._batches(slot, stream.draws(self.start_positions.get(slot, 0)))

    def _samples(self, draws: Iterator[tuple[int, int, int]], events: list) -> Iterator[tuple[int, Sample]]:
        """Good samples with their draw index; bad ones become (draw, BadEvent) entries of `events`."""
        total = sum(len(index.refs) for index in self.indexes)
        bad_run = 0
        for draw, source, i in draws:
            ref = self.indexes[source].refs[i]
            try:
                chat, images = validate(ref, self.reader.read(ref), self.settings)
                sample = encode(self.processor, chat, images, self.settings, self.indexes[source].name, ref.key)
            except SampleError as e:
                events.append((draw, BadEvent(e.reason, ref.shard, ref.key, e.detail)))
                bad_run += 1
                if bad_run >= max(_MIN_BAD_RUN, total):
                    raise RuntimeError(f"{bad_run} bad samples in a row, no usable data; last: {e}") from None
                continue
            bad_run = 0
            yield draw, sample

    def _batches(self, slot: int, draws: Iterator[tuple[int, int, int]]) -> Iterator[dict]:
        s = self.settings
        events: list[tuple[int, BadEvent]] = []
        cost = lambda item: item[1].cost(s.image_tokens)
        rows: list[list[tuple[int, Sample]]] = []
        last_draw = -1
        for row in pack_rows(self._samples(draws, events), cost, s.max_tokens, s.packing):
            if len(rows) == s.batch_size:
                yield self._batch(slot, rows, row[0][0], events)
                rows = []
            rows.append(row)
            last_draw = row[-1][0]
        if rows:
            end = max([last_draw] + [draw for draw, _ in events]) + 1
            yield self._batch(slot, rows, end, events)

    def _batch(self, slot: int, rows: list[list[tuple[int, Sample]]], position: int, events: list) -> dict:
        """Collate rows; take the events of draws before `position` out of `events` into the meta."""
        samples = [[sample for _, sample in row] for row in rows]
        mine = [event for draw, event in events if draw < position]
        events[:] = [(draw, event) for draw, event in events if draw >= position]
        flat = [sample for row in samples for sample in row]
        batch = collate_rows(samples, self.processor.pad_token_id)
        batch["_meta"] = {
            "slot": slot,
            "position": position,
            "good": len(flat),
            "truncated": sum(sample.truncated for sample in flat),
            "sources": dict(Counter(sample.source for sample in flat)),
            "bad": mine,
        }
        return batch
