"""Per-question scores as lmms-eval's tasks compute them, where they differ from `casa_adapter.metrics`.

`casa_adapter.metrics` follows the official definitions (docs/metrics.md). Papers that report
lmms-eval numbers (Kyutai's CASA among them) were scored by lmms-eval's task functions, which
differ at a few edges; the `kyutai` protocol scores with these, so its numbers are lmms-eval's:

- `lmms_relaxed_match` (ChartQA, `tasks/chartqa/utils.relaxed_correctness`): numbers are
  `float(text)` (so `1,234` is text); a reference of 0 is compared as text; text is compared
  lowercased but not stripped;
- `lmms_anls_score` (DocVQA, InfoVQA, `api/metrics.anls`): the distance is divided by the longer
  *raw* length (before stripping), and the 0.5 cut-off applies to `1 - min NL`, so NL = 0.5 scores
  0.5, not 0;
- `textvqa_score` (`tasks/textvqa/utils.textvqa_process_results`): both sides first go through
  EvalAI's `word_tokenize` (lowercase, `,` and `?` deleted, `'s` split off).

VQAv2 (`tasks/vqav2/utils.vqav2_process_results`) equals `casa_adapter.metrics.vqa_soft_score`,
and the protocol uses that. tests/eval/test_lmms_golden.py checks every score here against the
lmms-eval functions themselves.

>>> lmms_relaxed_match("1,030", "1000"), lmms_anls_score("abcd", ["abxy"]), textvqa_score("a,b", ["ab"] * 4)
(False, 0.5, 1.0)
"""

from __future__ import annotations

from casa_adapter.metrics.anls import levenshtein_distance
from casa_adapter.metrics.base import MeanScoreMetric
from casa_adapter.metrics.vqa import vqa_soft_score


def _as_float(text: str) -> float | None:
    """`float(text)`, with a trailing `%` dividing by 100; None when it is not a number."""
    try:
        return float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def lmms_relaxed_match(pred: str, target: str, tolerance: float = 0.05) -> bool:
    """ChartQA relaxed correctness as lmms-eval computes it: within `tolerance` of a non-zero numeric
    target, else lowercase string equality.

    >>> lmms_relaxed_match("104.9", "100"), lmms_relaxed_match("0.0", "0"), lmms_relaxed_match("Yes ", "yes")
    (True, False, False)
    """
    pred_value, target_value = _as_float(pred), _as_float(target)
    if pred_value is not None and target_value:
        return abs(pred_value - target_value) / abs(target_value) <= tolerance
    return pred.lower() == target.lower()


def lmms_anls_score(pred: str, references: list[str], threshold: float = 0.5) -> float:
    """ANLS of one question as lmms-eval computes it: `1 - min NL` over references (NL: the Levenshtein
    distance of the cleaned strings over the longer raw length), 0 when below `threshold`.

    >>> lmms_anls_score(" Invoice 12 ", ["invoice 13"])  # distance 1 over the raw length 12
    0.9166666666666666
    """
    if not references:
        raise ValueError("lmms_anls_score needs at least one reference answer")
    det = " ".join(pred.strip().lower().split())
    distances = []
    for reference in references:
        gt = " ".join(reference.strip().lower().split())
        length = max(len(reference.upper()), len(pred.upper()))
        distances.append(levenshtein_distance(gt, det) / length if length else 0.0)
    score = 1.0 - min(distances)
    return 0.0 if score < threshold else score


def word_tokenize(text: str) -> str:
    """EvalAI's first answer step (TextVQA in lmms-eval): lowercase, delete `,` and `?`, split `'s` off, strip.

    >>> word_tokenize("The Man's Hat, Right?")
    "the man 's hat right"
    """
    return text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()


def textvqa_score(pred: str, references: list[str]) -> float:
    """TextVQA accuracy as lmms-eval computes it: the VQA leave-one-out accuracy after `word_tokenize`."""
    return vqa_soft_score(word_tokenize(pred), [word_tokenize(reference) for reference in references])


class LmmsRelaxedAccuracy(MeanScoreMetric):
    """ChartQA relaxed accuracy with lmms-eval's `relaxed_correctness` (best reference counts)."""

    def score(self, pred: str, references: list[str]) -> float:
        return float(any(lmms_relaxed_match(pred, reference) for reference in references))


class LmmsANLS(MeanScoreMetric):
    """DocVQA / InfoVQA ANLS with lmms-eval's `anls`."""

    def score(self, pred: str, references: list[str]) -> float:
        return lmms_anls_score(pred, references)


class TextVQAAccuracy(MeanScoreMetric):
    """TextVQA accuracy with lmms-eval's `textvqa_process_results`."""

    def score(self, pred: str, references: list[str]) -> float:
        return textvqa_score(pred, references)


__all__ = [
    "LmmsANLS",
    "LmmsRelaxedAccuracy",
    "TextVQAAccuracy",
    "lmms_anls_score",
    "lmms_relaxed_match",
    "textvqa_score",
    "word_tokenize",
]
