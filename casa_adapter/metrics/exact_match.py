"""`ExactMatch`: share of predictions equal to a reference after VQA normalisation."""

from __future__ import annotations

from typing import Any

from casa_adapter.metrics.base import MeanScoreMetric
from casa_adapter.metrics.normalize import normalize_answer


class ExactMatch(MeanScoreMetric):
    """Normalised exact match, 1 if the prediction equals any reference, else 0.

    Both sides go through `normalize_answer` (lowercase, strip, collapse whitespace,
    punctuation and trailing periods, articles, number words, contractions) unless
    ``normalize=False``, which compares the raw strings with only surrounding whitespace stripped.
    ``target`` holds one str or one list of str (any may match) per prediction.

    >>> metric = ExactMatch()
    >>> metric.update(["The cat.", "two", "dog"], ["cat", ["2", "pair"], "wolf"])
    >>> metric.compute()  # (1 + 1 + 0) / 3
    tensor(0.6667)
    """

    def __init__(self, normalize: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.normalize = normalize

    def _clean(self, text: str) -> str:
        return normalize_answer(text) if self.normalize else text.strip()

    def score(self, pred: str, references: list[str]) -> float:
        pred = self._clean(pred)
        return float(any(pred == self._clean(reference) for reference in references))
