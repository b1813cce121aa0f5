"""Answer normalisation of the official VQAv2 evaluation (``vqaEval.py``).

`normalize_answer` reproduces the two steps the VQA evaluation server applies to every
answer, in the form used by the EvalAI server code and most re-implementations:

1. ``processPunctuation``: each punctuation mark of `_PUNCTUATION` is deleted when it
   touches a space (``"yes !"``) or when the text holds a digit-comma-digit group
   (``"1,000"``), otherwise it becomes a space (``"black-white"`` -> ``"black white"``);
   then every period not followed by a digit is deleted (``"yes."`` -> ``"yes"``, but
   ``"2.5"`` stays).
2. ``processDigitArticle``: lowercase, split on whitespace (which also collapses runs of
   spaces, tabs and newlines), map number words to digits (``"two"`` -> ``"2"``,
   ``"none"`` -> ``"0"``), drop the articles ``a``, ``an``, ``the``, and restore the
   apostrophe of common contractions (``"dont"`` -> ``"don't"``).
"""

from __future__ import annotations

import re

_PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# The official pattern is r"(?!<=\d)(\.)(?!\d)": its "(?!<=\d)" is a look-ahead that always
# holds before a ".", so the pattern means "a period not followed by a digit", as written here.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
# The official table, verbatim (its capitalised keys can never match lowercased words; kept for fidelity).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip


def process_punctuation(text: str) -> str:
    """Step 1 of the VQA normalisation: punctuation marks and periods (see the module docstring)."""
    joined = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        touches_space = (mark + " " in text) or (" " + mark in text)
        out = out.replace(mark, "" if touches_space or joined else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def process_digit_article(text: str) -> str:
    """Step 2 of the VQA normalisation: lowercase, number words, articles, contractions."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES]
    return " ".join(words)


def normalize_answer(s: str) -> str:
    """Normalise an answer the way the official VQAv2 evaluation does.

    >>> normalize_answer("  The Two  dogs. ")
    '2 dogs'
    >>> normalize_answer("Dont know!")
    "don't know"
    >>> normalize_answer("1,000")
    '1000'
    >>> normalize_answer("black-and-white")
    'black and white'
    """
    if not isinstance(s, str):
        raise TypeError(f"normalize_answer expects a str, got {type(s).__name__}")
    text = s.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))
