"""Streamed shards from a real HTTP server on 127.0.0.1 (and `pipe:`): the same samples as local
files, exact resume (one process, workers, two ranks), retries, missing and broken shards counted."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import time

import pytest
import torch
from shard_server import Faults, faulty_server
from test_data_loader import _fit, make_processor, roundtrip, run, same

from casa_adapter.data.commands import main as data_main
from casa_adapter.data.counters import BadDataError
from casa_adapter.data.dataset import BatchStream
from casa_adapter.data.fetch import StreamSettings
from casa_adapter.data.fixtures import write_good_shards
from casa_adapter.data.loader import BatchLoader
from casa_adapter.data.settings import DataSettings
from casa_adapter.data.shards import index_tar
from casa_adapter.data.sources import Source
from casa_adapter.data.streaming import ShardList, StreamCursor, open_source

N_SAMPLES, N_SHARDS = 60, 8
SHARDS = "shard-{000000..000007}.tar"
FAST_RETRIES = StreamSettings(retries=2, retry_backoff=0.01)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("remote"))
    write_good_shards(root, N_SAMPLES, maxcount=8)  # 7 shards of 8 samples, one of 4
    return root


@pytest.fixture(scope="module")
def processor():
    return make_processor()


def settings(**overrides) -> DataSettings:
    base = {"image_tokens": 4, "max_tokens": 120, "batch_size": 2, "num_workers": 0, "stream": FAST_RETRIES}
    return DataSettings(**{**base, **overrides})


def loader(spec: str, processor, s: DataSettings, train: bool = True, rank: int = 0, world: int = 1) -> BatchLoader:
    stream = BatchStream([open_source(Source(spec, name="a"))], [1.0], processor, s, train, rank, world)
    return BatchLoader(stream, epoch_batches=5 if train else None)


def sample_numbers(batches: list[dict], processor) -> list[int]:
    """The toy samples' numbers, read back from the text of each batch (`(sample i)` in every question)."""
    text = "".join(processor.tokenizer.decode(row) for batch in batches for row in batch["input_ids"])
    return [int(n) for n in re.findall(r"\(sample (\d+)\)", text)]


@pytest.mark.parametrize("train, workers", [(False, 0), (True, 0), (True, 2)])
def test_http_gives_the_local_samples_in_the_local_order(folder, processor, train, workers) -> None:
    s = settings(num_workers=workers, shuffle_buffer=0)  # no shuffle: both readers go shard by shard
    with faulty_server(folder, Faults()) as url:
        remote = loader(f"{url}/{SHARDS}", processor, s, train)
        streamed = run(remote, 30) if train else list(remote)
    local = loader(folder, processor, s, train)
    indexed = run(local, 30) if train else list(local)
    assert len(streamed) == len(indexed) and all(same(a, b) for a, b in zip(streamed, indexed))
    if not train:
        assert sample_numbers(indexed, processor) == list(range(N_SAMPLES))
    assert remote.counter.good == local.counter.good and remote.counter.n_bad == 0


@pytest.mark.parametrize("workers, stop", [(0, 3), (2, 4), (2, 9)])
def test_streamed_resume_sees_exactly_the_uninterrupted_batches(folder, processor, workers, stop) -> None:
    s = settings(num_workers=workers)  # full shuffle within shards, a new shard order each epoch
    with faulty_server(folder, Faults()) as url:
        spec = f"{url}/{SHARDS}"
        reference = run(loader(spec, processor, s), 20)  # several epochs of every slot
        first = loader(spec, processor, s)
        seen = run(first, stop)
        state = roundtrip(first.state_dict())
        resumed = loader(spec, processor, s)
        resumed.load_state_dict(state)
        seen += run(resumed, 20 - stop)
    assert len(seen) == 20 and all(same(a, b) for a, b in zip(seen, reference))
    assert any(location != (0, 0, 0) for slot in state["ranks"][0]["streams"].values() for location in slot.values())


def test_two_ranks_read_disjoint_shards_and_each_resumes(folder, processor) -> None:
    s = settings()
    firsts = []
    with faulty_server(folder, Faults()) as url:
        spec = f"{url}/{SHARDS}"
        for rank in range(2):
            reference = run(loader(spec, processor, s, rank=rank, world=2), 9)
            first = loader(spec, processor, s, rank=rank, world=2)
            seen = run(first, 4)
            resumed = loader(spec, processor, s, rank=rank, world=2)
            resumed.load_state_dict(roundtrip(first.state_dict()))
            seen += run(resumed, 5)
            assert all(same(a, b) for a, b in zip(seen, reference))
            firsts.append(set(sample_numbers(reference, processor)[:25]))  # within each rank's 4 shards of epoch 0
    assert len(firsts[0]) == len(firsts[1]) == 25 and not firsts[0] & firsts[1]


def test_a_dropped_connection_is_retried_and_continues(folder, processor) -> None:
    faults = Faults(drops={"shard-000003.tar": 2})
    with faulty_server(folder, faults) as url:
        batches = list(loader(f"{url}/{SHARDS}", processor, settings(), train=False))
    assert sorted(sample_numbers(batches, processor)) == list(range(N_SAMPLES))
    assert faults.requests["shard-000003.tar"] == 3 and faults.requests["shard-000004.tar"] == 1


def test_a_shard_that_keeps_breaking_counts_its_rest_as_bad(folder, processor, caplog, tmp_path) -> None:
    name = "shard-000002.tar"
    with open(os.path.join(folder, name), "rb") as f:
        data = f.read()
    (tmp_path / "half.tar").write_bytes(data[: len(data) // 2])
    complete = [ref.key for ref in index_tar(str(tmp_path / "half.tar")) if ref.problem is None]  # before the break
    faults = Faults(drops={name: 99})
    with faulty_server(folder, faults) as url, caplog.at_level(logging.WARNING, logger="casa_adapter.data"):
        eval_loader = loader(f"{url}/{SHARDS}", processor, settings(), train=False)
        batches = list(eval_loader)
    assert faults.requests[name] == FAST_RETRIES.retries + 1
    assert 0 < len(complete) < 8 and eval_loader.counter.good == N_SAMPLES - 8 + len(complete)
    assert dict(eval_loader.counter.bad) == {"shard_read_error": 1}
    assert len(sample_numbers(batches, processor)) == eval_loader.counter.good
    assert any(f"{url}/{name}" in r.getMessage() and "shard_read_error" in r.getMessage() for r in caplog.records)


def test_a_missing_shard_is_counted_and_the_run_goes_on_below_the_threshold(folder, processor) -> None:
    faults = Faults(missing={"shard-000001.tar", "shard-000005.tar"})
    with faulty_server(folder, faults) as url:
        spec = f"{url}/{SHARDS}"
        train = loader(spec, processor, settings(max_bad_fraction=0.2, min_samples_before_failing=10))
        run(train, 30)  # several epochs: each visit of a missing shard counts once
        assert train.counter.bad["missing_shard"] >= 4 and set(train.counter.bad) == {"missing_shard"}
        strict = loader(spec, processor, settings(max_bad_fraction=0.01, min_samples_before_failing=10))
        with pytest.raises(BadDataError, match="missing_shard"):
            run(strict, 30)
    assert faults.requests["shard-000001.tar"] >= 2  # a 404 is asked again on the next visit, never retried at once


def test_pipe_source_reads_like_local_files(folder, processor, caplog) -> None:
    spec = f"pipe:cat {folder}/{SHARDS}"
    piped = list(loader(spec, processor, settings(), train=False))
    local = list(loader(folder, processor, settings(), train=False))
    assert len(piped) == len(local) and all(same(a, b) for a, b in zip(piped, local))
    broken = loader(f"pipe:cat {folder}/no-such.tar", processor, settings(), train=False)
    with caplog.at_level(logging.WARNING, logger="casa_adapter.data"):
        assert list(broken) == [] and dict(broken.counter.bad) == {"shard_read_error": 1}
    assert any("exited with status 1" in r.getMessage() and "no-such.tar" in r.getMessage() for r in caplog.records)


def test_prefetch_cache_stays_bounded_and_is_removed(folder, tmp_path) -> None:
    faults = Faults()
    with faulty_server(folder, faults) as url:
        source = ShardList("a", [f"{url}/shard-{i:06d}.tar" for i in range(N_SHARDS)])
        stream = StreamSettings(prefetch_shards=2, cache_dir=str(tmp_path))
        cursor = StreamCursor(source, 0, 0, 0, 1, 0, stream, epochs=1)
        ref, members = cursor.next()
        time.sleep(0.5)  # let the prefetcher run until it waits for room
        (cache,) = os.listdir(tmp_path)
        assert len(os.listdir(tmp_path / cache)) == 3 and sum(faults.requests.values()) == 3
        assert ref.shard == f"{url}/shard-000000.tar" and b"sample 0" in members["json"]
        keys = [ref.key] + [cursor.next()[0].key for _ in range(N_SAMPLES - 1)]
        assert cursor.next() is None and keys == [f"s{i:06d}" for i in range(N_SAMPLES)]
        cursor.close()
    assert os.listdir(tmp_path) == []


def test_check_command_on_http_counts_missing_and_broken_shards(folder, tmp_path) -> None:
    faults = Faults(missing={"shard-000001.tar"}, drops={"shard-000007.tar": 99})
    out = tmp_path / "report.json"
    with faulty_server(folder, faults) as url:
        argv = ["check", f"{url}/{SHARDS}", "--json", str(out), "--quiet", "--retries", "1"]
        assert data_main(argv) == 0
    report = json.loads(out.read_text())
    assert report["shards"] == N_SHARDS and report["reasons"] == {"missing_shard": 1, "shard_read_error": 1}
    assert report["examples"]["missing_shard"] == [f"{url}/shard-000001.tar:"]


def test_streamed_training_needs_enough_shards_and_an_epoch_length(folder, processor) -> None:
    with faulty_server(folder, Faults()) as url:
        few = loader(f"{url}/shard-000000.tar", processor, settings(num_workers=0), rank=0, world=2)
        with pytest.raises(ValueError, match="1 shards for 2 slots"):
            next(iter(few))


def test_a_missing_backend_is_named_with_the_extra(monkeypatch, capsys) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "s3fs" else real(name, *a))
    with pytest.raises(ImportError, match=r"s3fs: pip install 'casa-adapter\[remote\]'"):
        open_source(Source("s3://bucket/llava/shard-{000000..000003}.tar"))
    assert data_main(["check", "s3://bucket/llava/shard-000000.tar", "--quiet"]) == 2
    assert "needs s3fs" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader`", "ignore:The dirpath has changed")
def test_lightning_resumes_a_mixture_of_streamed_and_local_shards_mid_epoch(folder, tmp_path) -> None:
    with faulty_server(folder, Faults()) as url:
        train = [{"shards": f"{url}/{SHARDS}", "weight": 2, "name": "http"}, {"shards": folder, "name": "local"}]
        full = _fit(folder, tmp_path / "full", max_steps=15, train=train).seen
        _fit(folder, tmp_path / "ckpt", max_steps=8, every=8, train=train)
        ckpt = next(p for p in os.listdir(tmp_path / "ckpt") if "step=8" in p)
        resumed = _fit(folder, tmp_path / "resume", 15, str(tmp_path / "ckpt" / ckpt), every=8, train=train).seen
    assert len(resumed) == 7 and all(torch.equal(a, b) for a, b in zip(resumed, full[8:]))
