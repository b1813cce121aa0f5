"""`VQAAccuracy`: the VQAv2 soft accuracy of the official evaluation (``vqaEval.py``)."""

from __future__ import annotations

from typing import Any

from torchmetrics.utilities import rank_zero_warn

from casa_adapter.metrics.base import MeanScoreMetric
from casa_adapter.metrics.normalize import normalize_answer


def vqa_soft_score(pred: str, references: list[str]) -> float:
    """Official VQAv2 accuracy of one prediction against its human answers.

    For each human answer left out in turn, the score is ``min(1, #other humans matching / 3)``;
    the result is the mean over the ``len(references)`` leave-one-out subsets (for VQAv2's 10
    answers, the 10 subsets of 9). Both sides are normalised with `normalize_answer`.

    >>> vqa_soft_score("two", ["2", "2"] + ["3"] * 8)  # (2 * min(1, 1/3) + 8 * min(1, 2/3)) / 10
    0.6
    """
    if not references:
        raise ValueError("vqa_soft_score needs at least one reference answer")
    pred = normalize_answer(pred)
    hits = [normalize_answer(reference) == pred for reference in references]
    matches = sum(hits)
    # Leaving out reference i removes one match exactly when reference i itself matches.
    subset_scores = [min(1.0, (matches - hit) / 3.0) for hit in hits]
    return sum(subset_scores) / len(subset_scores)


class VQAAccuracy(MeanScoreMetric):
    """VQAv2 soft accuracy: ``mean over leave-one-out subsets of min(1, #matching humans / 3)``.

    ``target`` holds, per prediction, the list of human answers (10 in VQAv2). With N answers
    the same leave-one-out mean runs over the N subsets, so the best reachable score is
    ``min(1, (N - 1) / 3)``: a warning is emitted (once) when an item has fewer than 4 answers.

    >>> metric = VQAAccuracy()
    >>> humans = ["2"] * 2 + ["3"] * 8
    >>> metric.update(["two", "3"], [humans, humans])
    >>> metric.compute()  # (0.6 + 1.0) / 2; "3" has 8 matches -> 1 on every subset
    tensor(0.8000)
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._warned_few_references = False

    def score(self, pred: str, references: list[str]) -> float:
        if len(references) < 4 and not self._warned_few_references:
            self._warned_few_references = True
            rank_zero_warn(
                f"VQAAccuracy: an item has {len(references)} reference answer(s); with N answers the "
                "leave-one-out VQA accuracy cannot exceed min(1, (N-1)/3). Use ExactMatch for single-answer data.",
                UserWarning,
            )
        return vqa_soft_score(pred, references)
