"""`ANLS`: Average Normalised Levenshtein Similarity of DocVQA / InfoVQA."""

from __future__ import annotations

from typing import Any

from casa_adapter.metrics.base import MeanScoreMetric


def levenshtein_distance(a: str, b: str) -> int:
    """Minimum number of single-character insertions, deletions and substitutions turning `a` into `b`.

    >>> levenshtein_distance("kitten", "sitting")
    3
    """
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def _clean(text: str) -> str:
    return " ".join(text.lower().split())


def normalized_levenshtein(a: str, b: str) -> float:
    """Levenshtein distance divided by the longer length (0 when both strings are empty)."""
    longest = max(len(a), len(b))
    return levenshtein_distance(a, b) / longest if longest else 0.0


def anls_score(pred: str, references: list[str], threshold: float = 0.5) -> float:
    """Max over references of ``1 - NL`` (``NL`` = normalised Levenshtein), 0 where ``NL >= threshold``.

    Strings are lowercased, stripped and their inner whitespace collapsed first.

    >>> anls_score("Invoice 12", ["invoice 13", "total"])  # NL = 1/10 -> 0.9
    0.9
    """
    pred = _clean(pred)
    best = 0.0
    for reference in references:
        distance = normalized_levenshtein(pred, _clean(reference))
        if distance < threshold:
            best = max(best, 1.0 - distance)
    return best


class ANLS(MeanScoreMetric):
    """ANLS (Biten et al., 2019; DocVQA, InfoVQA): mean over questions of `anls_score`.

    ``target`` holds one str or one list of str per prediction; the best reference counts.
    ``threshold`` (default 0.5) is the normalised distance from which an answer scores 0.

    >>> metric = ANLS()
    >>> metric.update(["Invoice 12", "abcd"], [["invoice 13"], ["abxy"]])
    >>> metric.compute()  # (0.9 + 0) / 2; "abcd" vs "abxy": NL = 2/4 = 0.5 >= 0.5 -> 0
    tensor(0.4500)
    """

    def __init__(self, threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"ANLS: threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold

    def score(self, pred: str, references: list[str]) -> float:
        return anls_score(pred, references, self.threshold)
