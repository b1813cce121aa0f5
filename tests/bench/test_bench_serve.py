"""`casa-adapter bench serve` end to end at a tiny size: two servers, real HTTP clients, one JSON."""

import json

import pytest

from casa_adapter.bench.commands import main

pytest.importorskip("litserve", reason="bench serve needs the [serve] extra (litserve)")
pytest.importorskip("httpx", reason="bench serve's clients use httpx (the [test] extra)")


@pytest.mark.slow
def test_bench_serve_measures_both_fusions(tmp_path, capsys):
    out = tmp_path / "serve.json"
    assert main(["serve", "--streams", "2", "--turns", "3", "--decode-tokens", "2", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    for fusion in ("casa", "insertion"):
        r = results[fusion]
        assert r["errors"] == 0 and r["tokens_per_s"] > 0
        assert len(r["ttft_ms"]) == 3 and all(len(turn) == 2 and min(turn) > 0 for turn in r["ttft_ms"])
        assert len(r["state_bytes"]) == 3 and r["rss_bytes"][-1] > 0
    # insertion keeps every frame's 16 tokens; CASA one marker position per frame
    growth = {f: results[f]["state_bytes"][-1] - results[f]["state_bytes"][0] for f in ("casa", "insertion")}
    assert growth["insertion"] > growth["casa"] > 0
    assert "state ins/casa" in capsys.readouterr().out
