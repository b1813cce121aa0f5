"""`BatchStream`: the IterableDataset each DataLoader worker runs (read -> decode -> pack -> batch).

Each worker is one slot of the deterministic order (`order.py`): slot = rank x W + local,
where local = (worker id + `rotation`) mod W. The loader sets `rotation` on resume so that the
DataLoader's round-robin over workers continues where it stopped. Every batch carries `_meta`:
its slot, the slot's position after it (the draw index of the first sample of the slot's next
batch), its good / truncated / per-source counts and the bad-sample events behind it. The
loader (`loader.py`) strips `_meta` before the batch reaches the model.

Streamed (remote) sources have their own cursors (`streaming.py`); their locations before the
slot's next batch go into `_meta` too (`streams`: {source: (epoch, shard, offset)}).
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
from casa_adapter.data.shards import SampleRef, ShardReader, SourceIndex
from casa_adapter.data.streaming import Location, ShardList, StreamCursor

_MIN_BAD_RUN = 1000
"""Consecutive bad draws (at least; or the whole data set) after which a slot gives up."""


class BatchStream(IterableDataset):
    """Batches of one rank's share of the data; see the module docstring."""

    def __init__(
        self,
        indexes: list[SourceIndex | ShardList],
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
        self.start_streams: dict[int, dict[int, Location]] = {}
        """Slot -> {streamed source: location to start at} (a resumed run)."""
        self.rotation = 0
        self.reader = ShardReader()

    def slot(self) -> tuple[int, int]:
        """(this worker's slot, number of slots)."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.rank * workers + (worker + self.rotation) % workers, self.world_size * workers

    def __iter__(self) -> Iterator[dict]:
        slot, n_slots = self.slot()
        streamed = self._cursors(slot, n_slots)
        sizes = [None if isinstance(index, ShardList) else index.shard_sizes for index in self.indexes]
        if self.train:
            stream = MixtureStream(sizes, self.weights, self.settings.seed, slot, n_slots, self.settings.shuffle_buffer)
            draws = stream.draws(self.start_positions.get(slot, 0), streamed)
        else:
            draws = self._evaluation_draws([size or [] for size in sizes], slot, n_slots, streamed)
        return self._batches(slot, draws, streamed)

    def _cursors(self, slot: int, n_slots: int) -> dict[int, StreamCursor]:
        """A cursor per streamed source, at its saved location (training) or at the start."""
        saved = self.start_streams.get(slot, {}) if self.train else {}
        s, epochs = self.settings, None if self.train else 1
        cursors = {}
        for number, index in enumerate(self.indexes):
            if isinstance(index, ShardList):
                location = tuple(saved.get(number, (0, 0, 0)))
                args = (index, number, s.seed, slot, n_slots, s.shuffle_buffer, s.stream, location, epochs)
                cursors[number] = StreamCursor(*args)
        return cursors

    @staticmethod
    def _evaluation_draws(
        sizes: list[list[int]], slot: int, n_slots: int, streamed: dict[int, StreamCursor]
    ) -> Iterator[tuple[int, int, Any]]:
        """Indexed sources split by sample (`SequentialStream`), then each streamed source's share, once."""
        draw = -1
        for draw, source, i in SequentialStream(sizes, slot, n_slots).draws():
            yield draw, source, i
        for source, cursor in streamed.items():
            while (item := cursor.next()) is not None:
                draw += 1
                yield draw, source, item

    def _read(self, source: int, item: Any) -> tuple[SampleRef, dict[str, bytes]]:
        """A draw's ref and member bytes: a sample index of an indexed source, or what a cursor read."""
        if isinstance(item, tuple):
            return item
        ref = self.indexes[source].refs[item]
        return ref, self.reader.read(ref)

    def _samples(
        self, draws: Iterator[tuple[int, int, Any]], events: list, streamed: dict[int, StreamCursor]
    ) -> Iterator[tuple[int, Sample, dict[int, Location]]]:
        """Good samples with their draw index and the streamed cursors' locations before that draw;
        bad ones become (draw, BadEvent) entries of `events`."""
        indexed = [len(index.refs) for index in self.indexes if isinstance(index, SourceIndex)]
        limit = _MIN_BAD_RUN if streamed else max(_MIN_BAD_RUN, sum(indexed))
        bad_run = 0
        before = {number: cursor.location() for number, cursor in streamed.items()}
        for draw, source, item in draws:  # a draw moves its cursor, so `before` is taken after each one
            ref, members = self._read(source, item)
            try:
                chat, images = validate(ref, members, self.settings)
                sample = encode(self.processor, chat, images, self.settings, self.indexes[source].name, ref.key)
            except SampleError as e:
                events.append((draw, BadEvent(e.reason, ref.shard, ref.key, e.detail)))
                bad_run += 1
                if bad_run >= limit:
                    raise RuntimeError(f"{bad_run} bad samples in a row, no usable data; last: {e}") from None
            else:
                bad_run = 0
                yield draw, sample, before
            before = {number: cursor.location() for number, cursor in streamed.items()}

    def _batches(
        self, slot: int, draws: Iterator[tuple[int, int, Any]], streamed: dict[int, StreamCursor]
    ) -> Iterator[dict]:
        s = self.settings
        events: list[tuple[int, BadEvent]] = []
        cost = lambda item: item[1].cost(s.image_tokens)
        rows: list[list[tuple[int, Sample, dict]]] = []
        last_draw = -1
        try:
            for row in pack_rows(self._samples(draws, events, streamed), cost, s.max_tokens, s.packing):
                if len(rows) == s.batch_size:
                    yield self._batch(slot, rows, row[0][0], row[0][2], events)
                    rows = []
                rows.append(row)
                last_draw = row[-1][0]
            if rows or events:  # the end of a finite stream: bad samples after the last batch count too
                end = max([last_draw] + [draw for draw, _ in events]) + 1
                yield self._batch(slot, rows, end, {n: c.location() for n, c in streamed.items()}, events)
        finally:
            for cursor in streamed.values():
                cursor.close()

    def _batch(self, slot: int, rows: list[list[tuple]], position: int, streams: dict, events: list) -> dict:
        """Collate rows; take the events of draws before `position` out of `events` into the meta.
        Without rows (only bad samples were left) the batch is its meta alone, which the loader counts."""
        samples = [[item[1] for item in row] for row in rows]
        mine = [event for draw, event in events if draw < position]
        events[:] = [(draw, event) for draw, event in events if draw >= position]
        flat = [sample for row in samples for sample in row]
        batch = collate_rows(samples, self.processor.pad_token_id) if rows else {}
        batch["_meta"] = {
            "slot": slot,
            "position": position,
            "streams": streams,
            "good": len(flat),
            "truncated": sum(sample.truncated for sample in flat),
            "sources": dict(Counter(sample.source for sample in flat)),
            "bad": mine,
        }
        return batch
