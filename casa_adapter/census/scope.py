"""Causal-LM types outside the census: what "decoder-only LLM with attention" excludes.

transformers' `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES` also lists the decoder halves of encoder-decoder
models, encoder-only models that can run as decoders (`is_decoder=True`), and pure recurrent models
with no attention anywhere. CASA sits beside a decoder-only model's self-attention, so these are
listed as out of scope with the reason, not counted.
"""

from __future__ import annotations

_ENCODER_DECODER = (
    "bart bigbird_pegasus blenderbot blenderbot-small marian mbart musicgen musicgen_melody mvp pegasus plbart "
    "prophetnet trocr whisper"
)
_ENCODER_ONLY = (
    "bert bert-generation big_bird camembert data2vec-text electra ernie megatron-bert rembert roberta "
    "roberta-prelayernorm roc_bert roformer xlm xlm-roberta xlm-roberta-xl xlnet xmod"
)
_RECURRENT = "falcon_mamba mamba mamba2 rwkv xlstm"

OUT_OF_SCOPE: dict[str, str] = {
    **dict.fromkeys(_ENCODER_DECODER.split(), "encoder-decoder (the decoder of a seq2seq model, with cross-attention)"),
    **dict.fromkeys(_ENCODER_ONLY.split(), "encoder-only (a bidirectional encoder run as a decoder)"),
    **dict.fromkeys(_RECURRENT.split(), "pure recurrent (no attention anywhere)"),
}
"""model_type -> why it is not a decoder-only attention LM."""

__all__ = ["OUT_OF_SCOPE"]
