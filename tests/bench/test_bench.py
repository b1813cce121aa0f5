"""`casa-adapter bench`: every subcommand runs end to end at tiny sizes and writes its documented JSON keys.
No timing is asserted."""

import json
import sys

import pytest

from casa_adapter.bench.commands import main


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert all(name in text for name in ("stream", "train", "kernel"))


def test_bench_stream_json(tmp_path):
    path = tmp_path / "stream.json"
    turns = 3
    assert (
        main(
            [
                "stream",
                "--turns",
                str(turns),
                "--image-tokens",
                "8",
                "--text-tokens",
                "4",
                "--decode-tokens",
                "2",
                "--warmup",
                "1",
                "--json",
                str(path),
            ]
        )
        == 0
    )
    data = json.loads(path.read_text())
    for fusion in ("casa", "insertion"):
        for key in ("latency_ms", "decode_tok_s", "state_bytes"):
            assert len(data[fusion][key]) == turns
    casa, ins = data["casa"]["state_bytes"], data["insertion"]["state_bytes"]
    assert ins[-1] - ins[-2] > casa[-1] - casa[-2] > 0  # insertion grows by image tokens too
    assert {"casa_latency_last_over_turn8", "state_insertion_over_casa_at_last"} <= set(data["summary"])
    assert data["machine"]["cores"] and data["settings"]["image_tokens"] == 8


def test_bench_train_json(tmp_path):
    path = tmp_path / "train.json"
    assert (
        main(
            [
                "train",
                "--preset",
                "image-heavy",
                "--batch",
                "1",
                "--image-tokens",
                "8",
                "--text-tokens",
                "8",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--json",
                str(path),
            ]
        )
        == 0
    )
    data = json.loads(path.read_text())
    runs = data["results"]["image-heavy"]
    for fusion in ("casa", "insertion"):
        assert {"tokens_per_s", "peak_bytes", "s_per_step", "memory_method"} <= set(runs[fusion])
    assert runs["workload"] == {"image_tokens": 8, "text_tokens": 8, "batch": 1}
    assert {"memory_casa_over_insertion", "tokens_per_s_casa_over_insertion"} <= set(data["summary"]["image-heavy"])
    assert data["memory_method"]


def test_bench_kernel_json(tmp_path):
    path = tmp_path / "kernel.json"
    assert (
        main(
            [
                "kernel",
                "--cases",
                "4w",
                "--repeats",
                "1",
                "--heads",
                "2",
                "--kv-heads",
                "2",
                "--head-dim",
                "8",
                "--json",
                str(path),
            ]
        )
        == 0
    )
    assert json.loads(path.read_text())["results"]


def test_bench_kernel_missing_is_clear(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "casa_adapter.bench.kernel", None)
    assert main(["kernel"]) == 2
    assert "not available" in capsys.readouterr().err
