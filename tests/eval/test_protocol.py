"""`casa-adapter eval --protocol kyutai`: the protocol's scores on hand-checked cases, the preset itself,
and a run of the command on a tiny demo set (no lmms-eval needed; tests/eval/test_lmms_golden.py
compares the scores with lmms-eval's own functions)."""

from __future__ import annotations

import doctest
import json

import pytest

import casa_adapter
from casa_adapter.backbone.base_models import load_base
from casa_adapter.data.make_demo import DemoSettings, make_demo
from casa_adapter.eval import EvalSettings, main
from casa_adapter.eval.protocol import KYUTAI, get_protocol, lmms_scores, presets, protocol_metrics
from casa_adapter.eval.protocol.lmms_scores import lmms_anls_score, lmms_relaxed_match, textvqa_score, word_tokenize

from conftest import randomize_new_params

SUFFIX = "\nAnswer the question using a single word or phrase."


@pytest.mark.parametrize(
    ("pred", "target", "expected"),
    [
        ("105", "100", True),  # |105 - 100| / 100 = 0.05 <= 0.05
        ("105.1", "100", False),  # 0.051
        ("94.99", "100", False),  # 0.0501
        ("12%", "0.12", True),  # 12 / 100
        ("1,030", "1000", False),  # not a float: compared as text
        ("0.0", "0", False),  # a zero reference is compared as text: "0.0" != "0"
        ("0", "0", True),
        ("Yes", "yes", True),  # lowercased
        ("Yes ", "yes", False),  # but not stripped
        ("1e2", "100", True),  # float("1e2") == 100
    ],
)
def test_lmms_relaxed_match(pred, target, expected):
    assert lmms_relaxed_match(pred, target) is expected


@pytest.mark.parametrize(
    ("pred", "refs", "expected"),
    [
        ("Invoice 12", ["invoice 13", "total"], 0.9),  # distance 1 / length 10
        (" Invoice 12 ", ["invoice 13"], 1 - 1 / 12),  # the length counts the raw spaces: 12
        ("abcd", ["abxy"], 0.5),  # NL = 2/4: 1 - 0.5 = 0.5 is not below 0.5, kept
        ("abc", ["abcdefg"], 0.0),  # NL = 4/7: 3/7 < 0.5 -> 0
        ("ab", ["abcd", "abc"], 1 - 1 / 3),  # the best reference: distance 1 / length 3
        ("", [""], 1.0),  # two empty strings: NL = 0
        ("hello   worlds", ["Hello World"], 1 - 1 / 14),  # distance 1 once cleaned, over the raw length 14
    ],
)
def test_lmms_anls_score(pred, refs, expected):
    assert lmms_anls_score(pred, refs) == pytest.approx(expected, abs=1e-12)


def test_textvqa_score_tokenizes_first():
    assert word_tokenize("The Man's hat, OK?") == "the man 's hat ok"
    humans = ["ab"] * 9 + ["a b"]
    # "a,b" -> "ab" (the comma deleted) matches 9 humans: every leave-one-out subset has >= 8 -> 1.0
    assert textvqa_score("a,b", humans) == 1.0
    # the VQA normalisation alone turns "a,b" into "a b": 1 match, so 9 subsets of min(1, 1/3) and one of 0
    assert casa_adapter.metrics.vqa_soft_score("a,b", humans) == pytest.approx(0.3)
    # 2 of 10 humans say "2": (2 * 1/3 + 8 * 2/3) / 10
    assert textvqa_score("two", ["2", "2"] + ["3"] * 8) == pytest.approx(0.6)


def test_kyutai_preset():
    assert KYUTAI.question("What is it?") == "What is it?" + SUFFIX
    assert [KYUTAI.clean(a) for a in [" Paris. ", "3.", "e.g..", "no"]] == ["Paris", "3", "e.g.", "no"]
    tasks = ["chartqa", "docvqa_val", "infovqa_test", "textvqa_val", "vqav2_val", "mme", "docvqax", None]
    metrics = ["relaxed_accuracy", "anls", "anls", "textvqa_accuracy", "vqa_accuracy", "exact_match", "exact_match"]
    assert [KYUTAI.metric_for(t) for t in tasks] == [*metrics, "exact_match"]
    assert get_protocol("kyutai") is KYUTAI
    with pytest.raises(ValueError, match="known protocols: \\['kyutai'\\]"):
        get_protocol("paper")
    with pytest.raises(ValueError, match="unknown protocol metric"):
        protocol_metrics(["bleu"])
    with pytest.raises(ValueError, match="give a protocol too"):
        EvalSettings(task="docvqa")


def test_protocol_metric_collection_averages():
    metrics = protocol_metrics(["anls", "relaxed_accuracy"])
    metrics.update(["abcd", "105"], [["abxy"], ["100"]])  # ANLS (0.5 + (1 - 1/3)) / 2; relaxed (0 + 1) / 2
    values = {k: round(float(v), 6) for k, v in metrics.compute().items()}
    assert values == {"anls": round((0.5 + 2 / 3) / 2, 6), "relaxed_accuracy": 0.5}


@pytest.mark.parametrize("module", [lmms_scores, presets])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted and not result.failed


@pytest.fixture(scope="module")
def demo_adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    make_demo(
        DemoSettings(out=str(root / "demo"), train=0, val=6, image_size=32, qtypes=("color",)), show_progress=False
    )
    llm, _ = load_base("tiny")
    model = casa_adapter.wrap(llm, vision=casa_adapter.VisionSettings("siglip-tiny", pretrained=False, image_size=32))
    randomize_new_params(model, scale=0.5)
    model.save_adapter(str(root / "adapter"))
    return root


def run(root, *extra) -> int:
    args = ["--adapter", str(root / "adapter"), "--base", "tiny", "--shards", str(root / "demo" / "val")]
    return main([*args, "--max-new-tokens", "4", "--quiet", *extra])


def test_command_with_the_protocol(demo_adapter, tmp_path):
    """The suffix reaches the prompt, no answer ends with ".", the one metric is the task's, computed on the
    JSONL as lmms-eval would."""
    out, metrics_path = tmp_path / "preds.jsonl", tmp_path / "metrics.json"
    flags = ["--protocol", "kyutai", "--task", "docvqa_val", "--out", str(out), "--json", str(metrics_path)]
    assert run(demo_adapter, *flags) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    results = json.loads(metrics_path.read_text())
    assert len(lines) == 6 and all(line["question"].endswith(SUFFIX) for line in lines)
    assert not any(line["prediction"].endswith(".") for line in lines)
    assert results["protocol"] == {"name": "kyutai", "task": "docvqa_val", "metric": "anls"}
    assert list(results["overall"]) == ["count", "anls"]
    expected = sum(lmms_anls_score(line["prediction"], line["answers"]) for line in lines) / len(lines)
    assert results["overall"]["anls"] == pytest.approx(expected, abs=1e-6)


def test_command_protocol_errors(demo_adapter, capsys):
    assert run(demo_adapter, "--protocol", "kyutai", "--metrics", "em") == 2
    assert "either --protocol or --metrics" in capsys.readouterr().err
    assert run(demo_adapter, "--protocol", "nope") == 2
    assert "unknown protocol 'nope'" in capsys.readouterr().err
    assert run(demo_adapter, "--task", "docvqa") == 2
    assert "give a protocol too" in capsys.readouterr().err
