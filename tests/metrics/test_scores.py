"""casa_adapter.metrics' scores: normalisation, exact match, VQA soft accuracy, ANLS and relaxed accuracy, each
against hand-computed values (and VQA against the official loop)."""

from __future__ import annotations

import itertools
import random

import pytest

from casa_adapter.metrics import (
    ANLS,
    ExactMatch,
    RelaxedAccuracy,
    VQAAccuracy,
    anls_score,
    levenshtein_distance,
    normalize_answer,
    parse_number,
    relaxed_match,
    vqa_soft_score,
)

ALL_METRICS = [ExactMatch, VQAAccuracy, ANLS, RelaxedAccuracy]
HUMANS = ["2", "2"] + ["3"] * 8  # 10 VQAv2-style answers: 2 say "2", 8 say "3"


def value(metric) -> float:
    return float(metric.compute())


# --------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Yes.", "yes"),  # trailing period dropped, lowercased
        ("  hello \t  World \n", "hello world"),  # strip + collapse whitespace
        ("two", "2"),  # number word -> digit
        ("None", "0"),  # official map: none -> 0
        ("the dog", "dog"),  # article removed
        ("A man and an apple", "man and apple"),
        ("dont", "don't"),  # contraction restored
        ("isnt it", "isn't it"),
        ("3.5", "3.5"),  # period before a digit kept
        ("1,000", "1000"),  # digit,digit -> comma deleted
        ("black-and-white", "black and white"),  # mark not touching a space -> space
        ("left, right", "left right"),  # mark touching a space -> deleted
        ("what?", "what"),
        ("e.g.", "eg"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_answer_rejects_non_str():
    with pytest.raises(TypeError, match="expects a str"):
        normalize_answer(3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- ExactMatch
def test_exact_match_hand_computed():
    metric = ExactMatch()
    # "  The Cat. " -> "cat" == "cat" (1); "Two" -> "2" == "2" (1); "yes!" -> "yes" == "yes" (1);
    # "cats" != "cat" (0); "apple" vs ["pear", "An apple"] -> second matches (1). 4 / 5 = 0.8
    metric.update(["  The Cat. ", "Two", "yes!", "cats", "apple"], ["cat", "2", "Yes", "cat", ["pear", "An apple"]])
    assert value(metric) == pytest.approx(0.8)


def test_exact_match_without_normalisation():
    metric = ExactMatch(normalize=False)
    # "The cat" != "cat" (0); " cat " strips to "cat" (1); "Cat" != "cat" (0) -> 1 / 3
    metric.update(["The cat", " cat ", "Cat"], ["cat", "cat", "cat"])
    assert value(metric) == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- VQAAccuracy
def _official_vqa(pred: str, refs: list[str]) -> float:
    """Literal transcription of the official loop: each subset of N-1 humans, min(1, matches / 3)."""
    pred = normalize_answer(pred)
    refs = [normalize_answer(r) for r in refs]
    subsets = list(itertools.combinations(range(len(refs)), len(refs) - 1))
    return sum(min(1.0, sum(refs[i] == pred for i in subset) / 3) for subset in subsets) / len(subsets)


@pytest.mark.parametrize(
    ("pred", "refs", "expected"),
    [
        # 0 of 10 match -> 0
        ("dog", HUMANS, 0.0),
        # 1 of 10: the matching human left out -> 0/3 (1 subset); otherwise 1/3 (9 subsets) -> 9/3/10 = 0.3
        ("cat", ["cat"] + ["dog"] * 9, 0.3),
        # 2 of 10 said "two": left out a matcher -> 1/3 (2 subsets); else 2/3 (8 subsets)
        # -> (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 6 / 10 = 0.6
        ("two", HUMANS, 0.6),
        # 3 of 10: (3 * 2/3 + 7 * 1) / 10 = (2 + 7) / 10 = 0.9
        ("cat", ["cat"] * 3 + ["dog"] * 7, 0.9),
        # 4 of 10: every subset keeps >= 3 matches -> 1
        ("cat", ["cat"] * 4 + ["dog"] * 6, 1.0),
        # fewer than 10: 2 of 3 match -> (2 * 1/3 + 1 * 2/3) / 3 = (4/3) / 3 = 4/9
        ("cat", ["cat", "cat", "dog"], 4 / 9),
        # 3 of 5: (3 * 2/3 + 2 * 1) / 5 = 4 / 5
        ("cat", ["cat"] * 3 + ["dog"] * 2, 0.8),
        # normalisation on both sides: "The Cat." / "cat" / "a cat" all become "cat" -> 3 of 10 -> 0.9
        ("The Cat.", ["cat", "CAT", "a cat"] + ["dog"] * 7, 0.9),
    ],
)
def test_vqa_soft_score_hand_computed(pred, refs, expected):
    assert vqa_soft_score(pred, refs) == pytest.approx(expected)
    assert _official_vqa(pred, refs) == pytest.approx(expected)


def test_vqa_soft_score_matches_official_loop_on_random_cases():
    rng = random.Random(0)
    vocab = ["yes", "no", "2", "two", "red", "Red."]
    for _ in range(200):
        refs = [rng.choice(vocab) for _ in range(rng.randint(2, 10))]
        pred = rng.choice(vocab)
        assert vqa_soft_score(pred, refs) == pytest.approx(_official_vqa(pred, refs))


def test_vqa_accuracy_metric_hand_computed():
    metric = VQAAccuracy()
    # "two" -> 0.6 (see above); "3" matches 8 humans -> 1.0; "dog" -> 0 -> (0.6 + 1 + 0) / 3
    metric.update(["two", "3", "dog"], [HUMANS, HUMANS, HUMANS])
    assert value(metric) == pytest.approx(1.6 / 3)


def test_vqa_accuracy_warns_once_with_few_references():
    metric = VQAAccuracy()
    with pytest.warns(UserWarning, match="cannot exceed"):
        metric.update(["cat"], [["cat"]])
    # A single reference leaves an empty set in its only subset -> 0
    assert value(metric) == 0.0


def test_vqa_accuracy_rejects_empty_reference_list():
    with pytest.raises(ValueError, match=r"target\[1\] has no reference"):
        VQAAccuracy().update(["a", "b"], [HUMANS, []])


# --------------------------------------------------------------------------- ANLS
@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("kitten", "sitting", 3),
        ("flaw", "lawn", 2),
        ("", "abc", 3),
        ("abc", "", 3),
        ("same", "same", 0),
        ("ab", "ba", 2),
    ],
)
def test_levenshtein(a, b, distance):
    assert levenshtein_distance(a, b) == distance
    assert levenshtein_distance(b, a) == distance


@pytest.mark.parametrize(
    ("pred", "refs", "expected"),
    [
        (" Hello ", ["hello"], 1.0),  # lowercase + strip -> identical
        ("abcde", ["abcxy"], 0.6),  # distance 2 / length 5 = 0.4 < 0.5 -> 1 - 0.4
        ("abcd", ["abxy"], 0.0),  # 2 / 4 = 0.5, not < 0.5 -> 0 (threshold edge)
        ("abcdefghij", ["abcdefxxxx"], 0.6),  # 4 / 10 = 0.4 -> 0.6
        ("abcdefghij", ["abcdexxxxx"], 0.0),  # 5 / 10 = 0.5 -> 0
        ("abcde", ["zzzzz", "abcdf"], 0.8),  # best reference: 1 / 5 -> 0.8
        ("", [""], 1.0),  # both empty -> distance 0
        ("", ["abc"], 0.0),  # 3 / 3 = 1 -> 0
    ],
)
def test_anls_score_hand_computed(pred, refs, expected):
    assert anls_score(pred, refs) == pytest.approx(expected)


def test_anls_threshold_parameter():
    # "abcd" vs "abxy": NL = 0.5; with threshold 0.6 it is kept: 1 - 0.5 = 0.5
    metric = ANLS(threshold=0.6)
    metric.update(["abcd"], [["abxy"]])
    assert value(metric) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="threshold"):
        ANLS(threshold=0.0)


def test_anls_metric_list_of_list_targets():
    metric = ANLS()
    # 1.0 (exact) + 0.8 (best of two refs) + 0.0 (NL >= 0.5) -> 1.8 / 3 = 0.6
    metric.update(["Total", "abcde", "abcd"], [["total"], ["zzzzz", "abcdf"], "abxy"])
    assert value(metric) == pytest.approx(0.6)


# --------------------------------------------------------------------------- RelaxedAccuracy
@pytest.mark.parametrize(
    ("pred", "target", "expected"),
    [
        ("104.9", "100", True),  # 4.9% off
        ("105", "100", True),  # exactly 5%: inclusive
        ("105.1", "100", False),  # 5.1% off
        ("95.1", "100", True),  # -4.9%
        ("94.9", "100", False),  # -5.1%
        ("1,234", "1234", True),  # thousands separator
        ("1,290", "1234", True),  # 56 / 1234 = 4.54%
        ("1,300", "1234", False),  # 66 / 1234 = 5.35%
        ("12%", "0.12", True),  # percent -> /100, as ChartQA's evaluator
        ("12.5%", "12%", True),  # 0.125 vs 0.12: 4.17%
        ("12%", "12", False),  # 0.12 vs 12
        ("0.0", "0", True),  # zero target: exact numeric equality
        ("0.01", "0", False),
        ("Yes ", "yes", True),  # non-numeric: case-insensitive, stripped
        ("yes", "no", False),
        ("nan", "nan", True),  # "nan" is a word here, compared as a string
    ],
)
def test_relaxed_match(pred, target, expected):
    assert relaxed_match(pred, target) is expected


def test_parse_number():
    assert parse_number("1,234,567.5") == 1234567.5
    assert parse_number("-12 %") == pytest.approx(-0.12)
    assert parse_number("1,2") is None  # not a thousands group -> not a number
    assert parse_number("inf") is None


def test_relaxed_accuracy_metric_hand_computed():
    metric = RelaxedAccuracy()
    # "104.9" vs "100" -> 1; "105.1" vs "100" -> 0; "Blue" vs ["red", "blue"] -> 1; "7" vs ["6", "7.3"] -> 1 (4.1%)
    # -> 3 / 4 = 0.75
    metric.update(["104.9", "105.1", "Blue", "7"], ["100", "100", ["red", "blue"], ["6", "7.3"]])
    assert value(metric) == pytest.approx(0.75)
    strict = RelaxedAccuracy(tolerance=0.0)
    strict.update(["104.9", "100.0"], ["100", "100"])  # only the exact number counts -> 1 / 2
    assert value(strict) == pytest.approx(0.5)
