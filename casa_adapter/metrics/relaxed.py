"""`RelaxedAccuracy`: the ChartQA relaxed correctness (numbers within 5%, else exact string)."""

from __future__ import annotations

import math
import re
from typing import Any

from casa_adapter.metrics.base import MeanScoreMetric

_THOUSANDS = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?")
# Slack on the inclusive bound so that an exact 5% difference is not lost to float rounding.
_FLOAT_SLACK = 1e-9


def parse_number(text: str) -> float | None:
    """`text` as a float, or None; ``"1,234"`` -> 1234.0 and ``"12%"`` -> 0.12 (as ChartQA's evaluator).

    >>> parse_number(" 1,234.5 "), parse_number("12%"), parse_number("twelve")
    (1234.5, 0.12, None)
    """
    text = text.strip()
    percent = text.endswith("%")
    if percent:
        text = text[:-1].rstrip()
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value):  # "nan", "inf" are words here, not numbers
        return None
    return value / 100.0 if percent else value


def relaxed_match(pred: str, target: str, tolerance: float = 0.05) -> bool:
    """True if both parse as numbers within `tolerance` relative error of `target`, else case-insensitive equality.

    >>> relaxed_match("104.9", "100"), relaxed_match("105.1", "100"), relaxed_match("Yes ", "yes")
    (True, False, True)
    """
    pred_value, target_value = parse_number(pred), parse_number(target)
    if pred_value is not None and target_value is not None:
        if target_value == 0.0:
            return pred_value == 0.0
        return abs(pred_value - target_value) / abs(target_value) <= tolerance + _FLOAT_SLACK
    return pred.strip().lower() == target.strip().lower()


class RelaxedAccuracy(MeanScoreMetric):
    """ChartQA relaxed accuracy: mean over questions of the best `relaxed_match` over references.

    ``target`` holds one str or one list of str per prediction; ``tolerance`` is the relative
    error allowed on numbers (default 0.05, inclusive).

    >>> metric = RelaxedAccuracy()
    >>> metric.update(["1,030", "12%", "Blue"], ["1000", "0.12", ["red", "blue"]])
    >>> metric.compute()  # 1030 is 3% off 1000 -> 1; 12% = 0.12 -> 1; "blue" -> 1
    tensor(1.)
    """

    def __init__(self, tolerance: float = 0.05, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if tolerance < 0:
            raise ValueError(f"RelaxedAccuracy: tolerance must be >= 0, got {tolerance}")
        self.tolerance = tolerance

    def score(self, pred: str, references: list[str]) -> float:
        return float(any(relaxed_match(pred, reference, self.tolerance) for reference in references))
