"""`build_metrics`: a `MetricCollection` from metric names (as written in recipes)."""

from __future__ import annotations

from collections.abc import Sequence

from torchmetrics import Metric, MetricCollection

from casa_adapter.metrics.anls import ANLS
from casa_adapter.metrics.exact_match import ExactMatch
from casa_adapter.metrics.relaxed import RelaxedAccuracy
from casa_adapter.metrics.vqa import VQAAccuracy

METRICS: dict[str, type[Metric]] = {
    "exact_match": ExactMatch,
    "vqa_accuracy": VQAAccuracy,
    "anls": ANLS,
    "relaxed_accuracy": RelaxedAccuracy,
}
ALIASES: dict[str, str] = {
    "em": "exact_match",
    "exactmatch": "exact_match",
    "vqa": "vqa_accuracy",
    "vqaaccuracy": "vqa_accuracy",
    "relaxed": "relaxed_accuracy",
    "relaxedaccuracy": "relaxed_accuracy",
}


def canonical_name(name: str) -> str:
    """Canonical metric name: case-insensitive, ``-`` as ``_``, aliases and class names accepted."""
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in METRICS:
        known = sorted(METRICS) + sorted(ALIASES)
        raise ValueError(f"unknown metric {name!r}; known names are {known}")
    return key


def build_metrics(names: Sequence[str], prefix: str | None = None) -> MetricCollection:
    """A `MetricCollection` holding one fresh metric per name, keyed by canonical name.

    Compute groups are off: the metrics share state names (``score_sum``, ``count``), and
    torchmetrics would otherwise fuse any two whose states happen to agree after the first batch.

    >>> metrics = build_metrics(["em", "vqa_accuracy"])
    >>> metrics.update(["yes"], [["yes"] * 10])
    >>> {name: round(float(value), 4) for name, value in metrics.compute().items()}
    {'exact_match': 1.0, 'vqa_accuracy': 1.0}
    """
    if isinstance(names, str):
        raise TypeError("build_metrics expects a list of names, not a single str")
    keys = [canonical_name(name) for name in names]
    if not keys:
        raise ValueError("build_metrics needs at least one metric name")
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError(f"build_metrics: metric(s) requested twice: {duplicates}")
    return MetricCollection({key: METRICS[key]() for key in keys}, prefix=prefix, compute_groups=False)
