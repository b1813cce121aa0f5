"""Answer-level evaluation metrics for vision-language QA, as torchmetrics `Metric` classes.

Each metric takes generated answers and references as strings, ``update(preds, target)``,
and returns the mean per-question score in [0, 1] from ``compute()``:

- `ExactMatch`: normalised exact match against any reference;
- `VQAAccuracy`: the VQAv2 soft accuracy of the official evaluation (leave-one-out over humans);
- `ANLS`: DocVQA / InfoVQA Average Normalised Levenshtein Similarity;
- `RelaxedAccuracy`: ChartQA relaxed correctness (numbers within 5%).

Their states are a float64 score sum and an item count, both summed across processes
(``dist_reduce_fx="sum"``), so DDP evaluation equals single-process evaluation.
`normalize_answer` is the VQAv2 answer normalisation and `build_metrics` makes a
`MetricCollection` from names.

>>> from casa_adapter.metrics import build_metrics
>>> metrics = build_metrics(["anls", "relaxed"])
>>> metrics.update(["42"], [["42"]])
>>> sorted(metrics.compute())
['anls', 'relaxed_accuracy']
"""

from casa_adapter.metrics.anls import ANLS, anls_score, levenshtein_distance
from casa_adapter.metrics.collection import build_metrics
from casa_adapter.metrics.exact_match import ExactMatch
from casa_adapter.metrics.normalize import normalize_answer
from casa_adapter.metrics.relaxed import RelaxedAccuracy, parse_number, relaxed_match
from casa_adapter.metrics.vqa import VQAAccuracy, vqa_soft_score

__all__ = [
    "ANLS",
    "ExactMatch",
    "RelaxedAccuracy",
    "VQAAccuracy",
    "anls_score",
    "build_metrics",
    "levenshtein_distance",
    "normalize_answer",
    "parse_number",
    "relaxed_match",
    "vqa_soft_score",
]
