"""Bad input is counted by reason, logged once with shard and key, never fatal unless asked."""

from __future__ import annotations

import json
import logging

import pytest

from casa_adapter.data.check import to_tensor
from casa_adapter.data.commands import main as data_main
from casa_adapter.data.counters import BadDataError
from casa_adapter.data.dataset import BatchStream
from casa_adapter.data.fixtures import write_corrupt_set, write_good_shards
from casa_adapter.data.loader import BatchLoader
from casa_adapter.data.settings import DataSettings
from casa_adapter.data.shards import SourceIndex, index_tar
from casa_adapter.data.sources import Source
from casa_adapter.processor import Processor

from tiny_tokenizers import tiny_chat_tokenizer


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory) -> tuple[str, dict[str, int]]:
    folder = str(tmp_path_factory.mktemp("corrupt"))
    return folder, write_corrupt_set(folder)


@pytest.fixture(scope="module")
def processor() -> Processor:
    tok = tiny_chat_tokenizer()
    return Processor(tok, image_token_id=len(tok), image_transform=to_tensor)


def eval_loader(folder: str, processor: Processor, **settings) -> BatchLoader:
    s = DataSettings(**{"image_tokens": 4, "max_tokens": 256, "batch_size": 2, "num_workers": 0, **settings})
    return BatchLoader(BatchStream([SourceIndex.build(Source(folder))], [1.0], processor, s, train=False))


def test_every_reason_is_counted_and_logged_once(corrupt, processor, caplog) -> None:
    folder, expected = corrupt
    loader = eval_loader(folder, processor)
    with caplog.at_level(logging.WARNING, logger="casa_adapter.data"):
        batches = list(loader)
        list(loader)  # a second pass counts again but does not log again
    counts = loader.counter.as_dict()
    assert sum(b["sample_ids"].amax(1).sum().item() for b in batches) == expected["good"]
    assert counts["good"] == 2 * expected["good"]
    assert {k[4:]: v for k, v in counts.items() if k.startswith("bad/")} == {
        r: 2 * n for r, n in expected.items() if r != "good"
    }
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == sum(n for r, n in expected.items() if r != "good")
    assert any("'cut2'" in m and "cut-000000.tar" in m and "truncated_tar" in m for m in logged)


def test_counts_reach_the_main_process_from_workers(corrupt, processor) -> None:
    folder, expected = corrupt
    loader = eval_loader(folder, processor, num_workers=2)
    list(loader)
    assert loader.counter.good == expected["good"]
    assert loader.counter.n_bad == sum(n for r, n in expected.items() if r != "good")


def test_threshold_fails_the_run(corrupt, processor) -> None:
    folder, _ = corrupt
    loader = eval_loader(folder, processor, max_bad_fraction=0.5, min_samples_before_failing=10)
    with pytest.raises(BadDataError, match="bad"):
        list(loader)
    assert list(eval_loader(folder, processor, max_bad_fraction=0.9, min_samples_before_failing=10))


def test_check_command_prints_and_writes_json(corrupt, tmp_path, capsys) -> None:
    folder, expected = corrupt
    out = tmp_path / "report.json"
    assert data_main(["check", folder, "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    structural = {r: n for r, n in expected.items() if r not in ("good", "too_long")}
    assert report["reasons"] == structural
    assert report["good"] == expected["good"] + expected["too_long"]  # no tokenizer: no budget
    printed = capsys.readouterr().out
    assert "corrupt_image" in printed and f"good: {report['good']}" in printed
    assert data_main(["check", folder, "--quiet", "--fail-above", "0.5"]) == 1


def test_check_with_a_tokenizer_applies_the_budget(corrupt, tmp_path) -> None:
    folder, expected = corrupt
    tiny_chat_tokenizer().save_pretrained(tmp_path / "tok")
    out = tmp_path / "report.json"
    argv = ["check", folder, "--tokenizer", str(tmp_path / "tok"), "--max-tokens", "200", "--json", str(out), "--quiet"]
    assert data_main(argv) == 0
    report = json.loads(out.read_text())
    assert report["reasons"] == {r: n for r, n in expected.items() if r != "good"}
    assert report["good"] == expected["good"]


def test_tar_cut_between_members_or_not_a_tar(tmp_path) -> None:
    write_good_shards(str(tmp_path), 3, maxcount=10)
    shard = tmp_path / "shard-000000.tar"
    refs = index_tar(str(shard))
    assert [r.problem for r in refs] == [None, None, None]
    _, offset, size = refs[1].members[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: offset + -(-size // 512) * 512])  # ends right after sample 1: no end-of-archive blocks
    assert [(r.key, r.problem) for r in index_tar(str(shard))] == [(refs[0].key, None), (refs[1].key, "truncated_tar")]
    shard.write_bytes(b"this is not a tar file" * 40)
    assert [(r.key, r.problem) for r in index_tar(str(shard))] == [("", "truncated_tar")]
