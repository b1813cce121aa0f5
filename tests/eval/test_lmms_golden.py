"""The `kyutai` protocol's metrics equal lmms-eval's own task functions on a fixed predictions file.

`tests/fixtures/protocol_predictions.jsonl` holds predictions with their references for ChartQA,
DocVQA, InfoVQA, TextVQA and VQAv2, many on the edges where definitions part (thousands
separators, a zero reference, the ANLS cut-off, EvalAI's tokenisation). The expected scores are
computed here by lmms-eval's functions (`chartqa_process_results`, `anls`, `textvqa_process_results`,
`vqav2_process_results`), never written down. Skipped without lmms-eval (`pip install 'casa-adapter[lmms]'`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from casa_adapter.eval.protocol import KYUTAI
from casa_adapter.eval.protocol.presets import PROTOCOL_METRICS
from casa_adapter.metrics import build_metrics

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install 'casa-adapter[lmms]')")

from lmms_eval.api.metrics import anls
from lmms_eval.tasks.chartqa.utils import chartqa_process_results
from lmms_eval.tasks.textvqa.utils import textvqa_process_results
from lmms_eval.tasks.vqav2.utils import vqav2_process_results

PREDICTIONS = Path(__file__).resolve().parents[1] / "fixtures" / "protocol_predictions.jsonl"
ROWS = [json.loads(line) for line in PREDICTIONS.read_text().splitlines()]
OFFICIAL = {"chartqa": "relaxed_accuracy", "docvqa": "anls", "infovqa": "anls", "textvqa": "vqa", "vqav2": "vqa"}


def lmms_eval_score(index: int, row: dict) -> float:
    """The score lmms-eval's task gives one prediction (documents shaped as the tasks' datasets)."""
    task, pred, answers = row["task"], row["prediction"], list(row["answers"])
    if task == "chartqa":
        return chartqa_process_results({"type": "human_test", "answer": answers[0]}, [pred])["relaxed_overall"]
    if task in ("docvqa", "infovqa"):  # their yaml metric `anls`, called by Task.process_results
        return anls(references=answers, predictions=[pred])["anls"]
    if task == "textvqa":
        return textvqa_process_results({"answers": answers, "question_id": index}, [pred])["exact_match"]
    doc = {"answers": [{"answer": a, "answer_id": j + 1} for j, a in enumerate(answers)], "question_id": index}
    return vqav2_process_results(doc, [pred])["exact_match"]


def protocol_score(row: dict) -> float:
    metric = PROTOCOL_METRICS[KYUTAI.metric_for(row["task"])]()
    return metric.score(row["prediction"], row["answers"])


@pytest.mark.filterwarnings("ignore:VQAAccuracy")
def test_protocol_metrics_equal_lmms_eval_process_results():
    expected = [lmms_eval_score(i, row) for i, row in enumerate(ROWS)]
    ours = [protocol_score(row) for row in ROWS]
    mismatches = [(row, e, o) for row, e, o in zip(ROWS, expected, ours) if o != pytest.approx(e, abs=1e-12)]
    assert not mismatches, mismatches
    assert {row["task"] for row in ROWS} == set(OFFICIAL)
    assert 0 < sum(expected) < len(expected)  # the file holds hits and misses


@pytest.mark.filterwarnings("ignore:VQAAccuracy")
def test_the_file_reaches_where_official_definitions_differ():
    """On this file, lmms-eval's scores part from `casa_adapter.metrics`' official ones for ChartQA, the
    ANLS tasks and TextVQA (why the protocol carries its own), and agree for VQAv2."""
    differs = set()
    for i, row in enumerate(ROWS):
        official = build_metrics([OFFICIAL[row["task"]]])
        official.update([row["prediction"]], [row["answers"]])
        if float(next(iter(official.compute().values()))) != pytest.approx(lmms_eval_score(i, row), abs=1e-6):
            differs.add(row["task"])
    assert differs == {"chartqa", "docvqa", "textvqa"}
