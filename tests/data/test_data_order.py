"""Sample orders: shard / brace / folder specs, slot splits, shuffle buffers, mixture proportions."""

from __future__ import annotations

import itertools
import os
from collections import Counter

import numpy as np
import pytest

from casa_adapter.data.fixtures import write_good_shards
from casa_adapter.data.order import MixtureStream, SequentialStream, epoch_order, shuffled, slot_shards
from casa_adapter.data.shards import ShardReader, SourceIndex
from casa_adapter.data.sources import Source, as_sources, expand_shards


def test_shard_specs(tmp_path) -> None:
    write_good_shards(str(tmp_path / "a"), 25, maxcount=10)
    tars = [str(tmp_path / "a" / f"shard-{i:06d}.tar") for i in range(3)]
    assert expand_shards(str(tmp_path / "a")) == tars
    assert expand_shards(str(tmp_path / "a" / "shard-{000000..000002}.tar")) == tars
    assert expand_shards(str(tmp_path / "a" / "*.tar")) == tars
    assert expand_shards(f"{tars[0]}::{tars[2]}") == [tars[0], tars[2]]
    assert expand_shards(tars[1:]) == tars[1:]
    with pytest.raises(FileNotFoundError):
        expand_shards(str(tmp_path / "a" / "shard-{000000..000003}.tar"))
    sources = as_sources([str(tmp_path / "a"), {"shards": tars[0], "weight": 2, "name": "first"}])
    assert [(s.name, s.weight) for s in sources] == [("a", 1.0), ("first", 2)]


def test_folder_of_loose_files_reads_like_a_tar(tmp_path) -> None:
    write_good_shards(str(tmp_path / "t"), 5, maxcount=10)
    loose = tmp_path / "loose"
    loose.mkdir()
    tar_index = SourceIndex.build(Source(str(tmp_path / "t")))
    reader = ShardReader()
    for ref in tar_index.refs:
        for ext, data in reader.read(ref).items():
            (loose / f"{ref.key}.{ext}").write_bytes(data)
    loose_index = SourceIndex.build(Source(str(loose)))
    assert [r.key for r in loose_index.refs] == [r.key for r in tar_index.refs]
    assert all(reader.read(a) == reader.read(b) for a, b in zip(loose_index.refs, tar_index.refs))


@pytest.mark.parametrize("sizes, n_slots", [([10, 7, 9, 12], 2), ([10, 7], 3), ([5], 4)])
@pytest.mark.parametrize("buffer", [None, 0, 4])
def test_slots_partition_each_epoch(sizes, n_slots, buffer) -> None:
    for epoch in range(3):
        parts = [epoch_order(sizes, 7, 0, epoch, slot, n_slots, buffer) for slot in range(n_slots)]
        assert sorted(np.concatenate(parts).tolist()) == list(range(sum(sizes)))
    a = [epoch_order(sizes, 7, 0, 0, 0, n_slots, buffer), epoch_order(sizes, 7, 0, 1, 0, n_slots, buffer)]
    assert buffer == 0 or n_slots == 4 or not np.array_equal(*a)  # reshuffled every epoch


@pytest.mark.parametrize("n_shards, n_slots", [(8, 4), (9, 2), (5, 5)])
def test_streamed_shards_split_without_overlap(n_shards, n_slots) -> None:
    """Every rank x worker slot reads its own shards: together all of them, once, every epoch."""
    epochs = []
    for epoch in range(3):
        parts = [slot_shards(n_shards, 5, 0, epoch, slot, n_slots, None).tolist() for slot in range(n_slots)]
        assert sorted(s for part in parts for s in part) == list(range(n_shards))
        sizes = [1] * n_shards  # one sample a shard: the indexed split by shard gives each slot the same shards
        assert all(sorted(p) == sorted(epoch_order(sizes, 5, 0, epoch, s, n_slots, None)) for s, p in enumerate(parts))
        epochs.append(parts)
    assert epochs[0] != epochs[1] != epochs[2]  # a new shard order every epoch


def test_shuffle_buffer_is_a_local_permutation() -> None:
    seq = np.arange(1000)
    out = shuffled(seq, np.random.default_rng(0), 16)
    assert sorted(out.tolist()) == seq.tolist() and not np.array_equal(out, seq)
    assert np.all(out[: len(seq) - 16] < np.arange(16, len(seq)))  # an item leaves within 16 reads of entering


def test_mixture_proportions_follow_the_weights() -> None:
    weights = [0.6, 0.3, 0.1]
    sizes = [[50, 50], [40], [7, 7, 7]]
    counts = Counter()
    for slot in range(2):
        stream = MixtureStream(sizes, weights, seed=3, slot=slot, n_slots=2, shuffle_buffer=None)
        counts.update(source for _, source, _ in itertools.islice(stream.draws(), 2000))
    for source, weight in enumerate(weights):
        assert abs(counts[source] / 4000 - weight) < 0.025, (counts, weights)


def test_a_stream_restarted_at_a_draw_continues_identically() -> None:
    stream = MixtureStream([[13, 11], [9]], [2.0, 1.0], seed=1, slot=1, n_slots=2, shuffle_buffer=3)
    full = list(itertools.islice(stream.draws(), 3000))  # several epochs of each source, several mixture blocks
    for start in (0, 1, 17, 1023, 1024, 2500):
        assert list(itertools.islice(stream.draws(start), 300)) == full[start : start + 300]


def test_evaluation_reads_everything_once() -> None:
    sizes = [[4, 3], [5]]
    seen = [(s, i) for slot in range(3) for _, s, i in SequentialStream(sizes, slot, 3).draws()]
    assert sorted(seen) == [(0, i) for i in range(7)] + [(1, i) for i in range(5)]


def test_index_reads_back_what_was_written(tmp_path) -> None:
    keys = write_good_shards(str(tmp_path), 23, maxcount=10)
    index = SourceIndex.build(Source(str(tmp_path)))
    assert index.shard_sizes == [10, 10, 3] and [r.key for r in index.refs] == keys
    members = ShardReader().read(index.refs[4])
    assert set(members) == {"json", "0.png", "1.png"} and b"sample 4" in members["json"]
    assert os.path.basename(index.refs[22].shard) == "shard-000002.tar"
