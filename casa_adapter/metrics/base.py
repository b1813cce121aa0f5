"""Shared machinery: input checks and a torchmetrics base class that averages per-item scores.

Every metric of this package keeps two states, ``score_sum`` (float64) and ``count`` (long),
both reduced with ``dist_reduce_fx="sum"``, so a DDP ``compute()`` (or ``merge_state``)
gives exactly the score of a single process that saw every item.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

Target = Sequence[str | Sequence[str]]


def check_preds(preds: Sequence[str], target: Sequence, owner: str) -> list[str]:
    """Validate `preds` against `target` and return `preds` as a list of str."""
    if isinstance(preds, str) or isinstance(target, str):
        raise TypeError(f"{owner}.update expects lists (one entry per item), not a single str")
    preds, target = list(preds), list(target)
    if len(preds) != len(target):
        raise ValueError(
            f"{owner}: preds and target must have the same length, "
            f"got len(preds)={len(preds)} and len(target)={len(target)}"
        )
    for index, pred in enumerate(preds):
        if not isinstance(pred, str):
            raise TypeError(f"{owner}: preds[{index}] must be a str, got {type(pred).__name__}")
    return preds


def as_references(item: str | Sequence[str], index: int, owner: str) -> list[str]:
    """One target entry as a non-empty list of reference strings (a bare str is one reference)."""
    if isinstance(item, str):
        return [item]
    if not isinstance(item, Sequence):
        raise TypeError(f"{owner}: target[{index}] must be a str or a list of str, got {type(item).__name__}")
    references = list(item)
    if not references:
        raise ValueError(f"{owner}: target[{index}] has no reference answer")
    for reference in references:
        if not isinstance(reference, str):
            raise TypeError(f"{owner}: target[{index}] must hold str only, got {type(reference).__name__}")
    return references


class MeanScoreMetric(Metric):
    """Mean of a per-item score in [0, 1]; subclasses implement `score(pred, references)`."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    score_sum: Tensor
    count: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("score_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def score(self, pred: str, references: list[str]) -> float:
        raise NotImplementedError

    def update(self, preds: Sequence[str], target: Target) -> None:
        """Score each prediction against its references and add the scores to the running sum."""
        owner = type(self).__name__
        preds = check_preds(preds, target, owner)
        scores = [self.score(pred, as_references(refs, i, owner)) for i, (pred, refs) in enumerate(zip(preds, target))]
        self.score_sum += float(sum(scores))
        self.count += len(scores)

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Add another metric's states (or a state dict) to this one, as a DDP reduction would."""
        super().merge_state(incoming_state)
        self._computed = None  # torchmetrics would otherwise keep serving a compute() cached before the merge

    def compute(self) -> Tensor:
        """Mean score over every item seen (0 before any item)."""
        mean = self.score_sum / self.count.clamp(min=1)
        return mean.to(torch.get_default_dtype())
