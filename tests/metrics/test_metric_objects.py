"""casa_adapter.metrics' metric objects: input checks, accumulation over updates, two-rank sync (simulated and
over gloo), `build_metrics`, and the modules' doctests and docs examples."""

from __future__ import annotations

import doctest
import importlib
import json
import multiprocessing
import re
import tempfile
from pathlib import Path

import pytest
import torch.distributed as dist
from torch.testing import assert_close

from casa_adapter.metrics import ANLS, ExactMatch, RelaxedAccuracy, VQAAccuracy, build_metrics

ALL_METRICS = [ExactMatch, VQAAccuracy, ANLS, RelaxedAccuracy]
HUMANS = ["2", "2"] + ["3"] * 8  # 10 VQAv2-style answers: 2 say "2", 8 say "3"


def value(metric) -> float:
    return float(metric.compute())


# --------------------------------------------------------------------------- input checks
@pytest.mark.parametrize("metric_cls", ALL_METRICS)
def test_length_mismatch_names_both_lengths(metric_cls):
    with pytest.raises(ValueError, match=r"len\(preds\)=3 and len\(target\)=2"):
        metric_cls().update(["a", "b", "c"], [["a"], ["b"]])


@pytest.mark.parametrize("metric_cls", ALL_METRICS)
def test_bad_types_are_rejected(metric_cls):
    with pytest.raises(TypeError, match="single str"):
        metric_cls().update("abc", ["abc"])
    with pytest.raises(TypeError, match=r"preds\[1\]"):
        metric_cls().update(["a", 2], [["a"], ["2"]])
    with pytest.raises(TypeError, match=r"target\[0\]"):
        metric_cls().update(["a"], [[1]])


@pytest.mark.parametrize("metric_cls", ALL_METRICS)
def test_compute_before_update_is_zero(metric_cls):
    with pytest.warns(UserWarning):  # torchmetrics warns about compute() before update()
        assert value(metric_cls()) == 0.0


# --------------------------------------------------------------------------- accumulation / DDP
PREDS = ["two", "3", "The Cat.", "abcde", "104.9", "1,234", "no", "105.1"]
TARGETS = [HUMANS, HUMANS, ["cat"] * 3 + ["dog"] * 7, ["abcdf"] * 10, ["100"] * 10, ["1234"] * 10, HUMANS, ["100"] * 10]


@pytest.mark.parametrize("metric_cls", ALL_METRICS)
def test_several_updates_equal_one_update(metric_cls):
    whole, pieces = metric_cls(), metric_cls()
    whole.update(PREDS, TARGETS)
    for start, stop in [(0, 3), (3, 4), (4, 8)]:
        pieces.update(PREDS[start:stop], TARGETS[start:stop])
    assert int(pieces.count) == len(PREDS)
    assert value(whole) > 0.0
    assert_close(pieces.compute(), whole.compute())


@pytest.mark.parametrize("metric_cls", ALL_METRICS)
def test_forward_returns_batch_value_and_accumulates(metric_cls):
    reference, metric = metric_cls(), metric_cls()
    reference.update(PREDS[:4], TARGETS[:4])
    batch_value = metric(PREDS[:4], TARGETS[:4])
    assert_close(batch_value, reference.compute())
    metric(PREDS[4:], TARGETS[4:])
    reference.update(PREDS[4:], TARGETS[4:])
    assert_close(metric.compute(), reference.compute())


@pytest.mark.parametrize("metric_cls", ALL_METRICS)
def test_two_simulated_ranks_merge_like_one(metric_cls):
    rank0, rank1, single = metric_cls(), metric_cls(), metric_cls()
    rank0.update(PREDS[:3], TARGETS[:3])  # uneven shards: 3 + 5 items
    rank1.update(PREDS[3:], TARGETS[3:])
    single.update(PREDS, TARGETS)
    # Summing the states by hand is what dist_reduce_fx="sum" does across ranks
    summed = (rank0.score_sum + rank1.score_sum) / (rank0.count + rank1.count)
    assert_close(summed.float(), single.compute())
    # compute() before the merge: the merged metric must not keep serving this cached shard value
    assert_close(rank0.compute(), (rank0.score_sum / 3).float())
    rank0.merge_state(rank1)
    assert int(rank0.count) == len(PREDS)
    assert_close(rank0.compute(), single.compute())


def _ddp_worker(rank: int, world_size: int, tmp: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=world_size)
    try:
        shard = slice(0, 3) if rank == 0 else slice(3, None)  # uneven shards: 3 + 5 items
        metrics = build_metrics(["exact_match", "vqa_accuracy", "anls", "relaxed_accuracy"])
        metrics.update(PREDS[shard], TARGETS[shard])
        result = {name: float(v) for name, v in metrics.compute().items()}  # compute() syncs over gloo
        with open(f"{tmp}/rank{rank}.json", "w") as handle:
            json.dump(result, handle)
    finally:
        dist.destroy_process_group()


def _values(preds, targets) -> dict[str, float]:
    metrics = build_metrics(["exact_match", "vqa_accuracy", "anls", "relaxed_accuracy"])
    metrics.update(preds, targets)
    return {name: float(v) for name, v in metrics.compute().items()}


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available() or "fork" not in multiprocessing.get_all_start_methods(),
    reason="needs torch.distributed with gloo and the fork start method",
)
def test_real_gloo_two_process_sync_matches_single_process():
    expected = _values(PREDS, TARGETS)
    # Precondition: each shard alone scores differently on every metric, so an unsynced rank would fail
    for shard in (slice(0, 3), slice(3, None)):
        alone = _values(PREDS[shard], TARGETS[shard])
        assert all(alone[name] != pytest.approx(expected[name]) for name in expected)
    context = multiprocessing.get_context("fork")  # the children inherit the imported modules: about a second in all
    with tempfile.TemporaryDirectory() as tmp:
        workers = [context.Process(target=_ddp_worker, args=(rank, 2, tmp)) for rank in (0, 1)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
                worker.join()
        assert [worker.exitcode for worker in workers] == [0, 0]
        for rank in (0, 1):
            with open(f"{tmp}/rank{rank}.json") as handle:
                assert json.load(handle) == pytest.approx(expected), f"rank {rank}"


# --------------------------------------------------------------------------- build_metrics
def test_build_metrics_names_and_aliases():
    metrics = build_metrics(["EM", "vqa", "ANLS", "relaxed-accuracy"], prefix="val/")
    assert sorted(metrics.keys()) == ["val/anls", "val/exact_match", "val/relaxed_accuracy", "val/vqa_accuracy"]
    metrics.update(["two"], [HUMANS])
    result = {name: round(float(v), 6) for name, v in metrics.compute().items()}
    # "two" -> "2": exact match with a reference (1); VQA 0.6; ANLS "two" vs "2": best NL 3/3 -> 0;
    # relaxed: "two" is not a number -> string "two" != "2" -> 0
    assert result == {"val/exact_match": 1.0, "val/vqa_accuracy": 0.6, "val/anls": 0.0, "val/relaxed_accuracy": 0.0}


def test_build_metrics_errors():
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        build_metrics(["bleu"])
    with pytest.raises(ValueError, match="requested twice"):
        build_metrics(["em", "exact_match"])
    with pytest.raises(ValueError, match="at least one"):
        build_metrics([])
    with pytest.raises(TypeError, match="list of names"):
        build_metrics("anls")  # type: ignore[arg-type]


def test_build_metrics_does_not_fuse_metrics_whose_states_agree_on_the_first_batch():
    metrics = build_metrics(["exact_match", "relaxed_accuracy"])
    metrics.update(["yes"], ["yes"])  # both metrics: score 1, count 1 -> identical states
    metrics.update(["104"], ["100"])  # exact match 0, relaxed 1
    result = {name: float(v) for name, v in metrics.compute().items()}
    assert result == {"exact_match": 0.5, "relaxed_accuracy": 1.0}


# --------------------------------------------------------------------------- doctests
MODULES = ["", ".normalize", ".base", ".exact_match", ".vqa", ".anls", ".relaxed", ".collection"]


@pytest.mark.parametrize("suffix", MODULES)
def test_doctests(suffix):
    module = importlib.import_module("casa_adapter.metrics" + suffix)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if suffix != ".base":  # base.py holds machinery only; every public module shows an example
        assert result.attempted > 0


def test_docs_examples():
    page = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
    text = re.sub(r"^```.*$", "", page.read_text(), flags=re.MULTILINE)  # a fence would read as expected output
    test = doctest.DocTestParser().get_doctest(text, {}, "docs/metrics.md", str(page), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.summarize(verbose=False).attempted >= 8
    assert runner.summarize(verbose=False).failed == 0
