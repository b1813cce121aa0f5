"""Streamed sources: remote shards read whole, in order, through a local prefetch cache.

A source whose shards are remote (`fetch.is_remote`) has no index ahead of time: its shard
sizes are only known once a shard is read. So each slot reads whole shards (`order.slot_shards`:
the epoch's shard permutation, split by shard over all slots: ranks and workers never share a
shard), and shuffles within each shard (`order.shard_sample_order`). A `ShardPrefetcher`
downloads the next shards while the current one is read; a downloaded shard is indexed from its
local file (`shards.index_tar`), so a cut tar is handled as for local files.

A cursor's location is (epoch, shard position in the slot's share, samples read from it). A
resumed cursor fetches that shard again and skips the samples already read without decoding
them. What a fetch could not read becomes counted bad samples named by the shard's URL:
`missing_shard` (one for the shard), `shard_read_error` (one for the rest of the shard, after
the complete samples that arrived before the break).
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass
from typing import IO

import numpy as np

from casa_adapter.data.fetch import Fetched, StreamSettings, is_remote, require_backends
from casa_adapter.data.order import shard_sample_order, slot_shards
from casa_adapter.data.prefetch import ShardPrefetcher
from casa_adapter.data.shards import SampleRef, SourceIndex, index_tar, read_members
from casa_adapter.data.sources import Source, expand_shards

Location = tuple[int, int, int]
"""(epoch, position of the shard in the slot's share of that epoch, samples already read from it)."""


@dataclass
class ShardList:
    """A streamed source: its name and its shard names (URLs or `pipe:` commands), in spec order."""

    name: str
    shards: list[str]


def open_source(source: Source) -> SourceIndex | ShardList:
    """A local source's index (random access), or a remote source's shard list (streamed)."""
    names = expand_shards(source.shards)
    remote = [is_remote(name) for name in names]
    if not any(remote):
        return SourceIndex.build(source)
    if not all(remote):
        raise ValueError(f"source {source.name!r} mixes local and remote shards; make them two sources")
    require_backends(names)
    return ShardList(source.name or "", names)


def fetched_refs(fetched: Fetched) -> list[SampleRef]:
    """The samples of a fetched shard (member offsets into its local file), named by the shard's URL."""
    if fetched.problem == "missing_shard":
        return [SampleRef(fetched.name, "", (), "missing_shard", fetched.detail)]
    refs = [dataclasses.replace(ref, shard=fetched.name) for ref in index_tar(fetched.path)]
    if fetched.problem == "shard_read_error":
        cut = refs.pop() if refs and refs[-1].problem else None  # the sample the break cut through
        refs.append(SampleRef(fetched.name, cut.key if cut else "", (), "shard_read_error", fetched.detail))
    return refs


class StreamCursor:
    """A slot's walk through a streamed source, from a `Location`; `next()` -> (ref, member bytes).

    Training cursors (`epochs=None`) go on forever, a new shard permutation each epoch, and need
    at least as many shards as slots. `epochs=1` reads the slot's share once, in spec order (the
    evaluation split), and `next()` then returns None.
    """

    def __init__(
        self,
        source: ShardList,
        number: int,
        seed: int,
        slot: int,
        n_slots: int,
        shuffle_buffer: int | None,
        settings: StreamSettings,
        location: Location = (0, 0, 0),
        epochs: int | None = None,
    ) -> None:
        if epochs is None and len(source.shards) < n_slots:
            raise ValueError(
                f"streamed source {source.name!r} has {len(source.shards)} shards for {n_slots} slots "
                "(world size x num_workers): each slot reads whole shards, so give it at least as many shards"
            )
        self.source, self.settings, self.epochs = source, settings, epochs
        self._order = (seed, number, slot, n_slots, 0 if epochs else shuffle_buffer)
        self.epoch, self.shard, self.offset = location
        self._prefetcher: ShardPrefetcher | None = None
        self._finalizer: weakref.finalize | None = None
        self._fetched: Fetched | None = None
        self._refs: list[SampleRef] = []
        self._picks = np.empty(0, dtype=np.int64)
        self._file: IO[bytes] | None = None

    def location(self) -> Location:
        """Where the next sample comes from (saved with the loader's position)."""
        return self.epoch, self.shard, self.offset

    def _share(self, epoch: int) -> np.ndarray:
        seed, number, slot, n_slots, buffer = self._order
        return slot_shards(len(self.source.shards), seed, number, epoch, slot, n_slots, buffer)

    def _plan(self):
        """(epoch, position, shard number) and name of every shard this cursor will read, from its location."""
        epoch, position = self.epoch, self.shard
        while self.epochs is None or epoch < self.epochs:
            share = self._share(epoch)
            for k in range(position, len(share)):
                yield (epoch, k, int(share[k])), self.source.shards[share[k]]
            epoch, position = epoch + 1, 0

    def next(self) -> tuple[SampleRef, dict[str, bytes]] | None:
        """The next sample's ref (named by its shard's URL) and member bytes; None at the end."""
        if self._fetched is None and not self._load():
            return None
        ref = self._refs[self._picks[self.offset]]
        members = read_members(self._file, ref) if ref.problem is None else {}
        self.offset += 1
        if self.offset >= len(self._picks):
            self._release()
            self.shard, self.offset = self.shard + 1, 0
            if self.shard >= len(self._share(self.epoch)):
                self.epoch, self.shard = self.epoch + 1, 0
        return ref, members

    def _load(self) -> bool:
        """Take the next fetched shard that has samples left to read; False when the plan is done."""
        if self._prefetcher is None:
            self._prefetcher = ShardPrefetcher(self._plan(), self.settings)
            self._finalizer = weakref.finalize(self, self._prefetcher.close)
        for _ in range(len(self.source.shards) + 1):
            item = self._prefetcher.next()
            if item is None:
                return False
            (epoch, position, shard), fetched = item
            self.epoch, self.shard = epoch, position  # a shard emptied on resume moves the location on
            seed, number, slot, _, buffer = self._order
            self._refs = fetched_refs(fetched)
            self._picks = shard_sample_order(len(self._refs), seed, number, epoch, slot, shard, buffer)
            if self.offset < len(self._picks):
                self._fetched, self._file = fetched, open(fetched.path, "rb")  # noqa: SIM115 - closed in _release
                return True
            self._prefetcher.release(fetched)  # fewer samples than the saved offset (or none): next shard
            self.offset = 0
        raise RuntimeError(f"streamed source {self.source.name!r}: a whole round of its shards held no sample")

    def _release(self) -> None:
        self._file.close()
        self._prefetcher.release(self._fetched)
        self._fetched, self._file = None, None

    def close(self) -> None:
        """Stop the prefetcher and remove its cache folder."""
        if self._file is not None:
            self._file.close()
        if self._finalizer is not None:
            self._finalizer()
