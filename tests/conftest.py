"""Shared fixtures: tiny random models of every supported family and a tiny vision tower.

Nothing here downloads anything: models are built from configs, the tower is a conv net.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from torch import nn

VOCAB = 96
TINY = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def _cfg(cls, **extra):
    return lambda: cls(**{**TINY, **extra})


# model_type -> (config factory, model class). One entry per tested family.
FAMILY_CONFIGS = {
    "llama": (_cfg(tf.LlamaConfig), tf.LlamaForCausalLM),
    "mistral": (_cfg(tf.MistralConfig, sliding_window=None), tf.MistralForCausalLM),
    "qwen2": (_cfg(tf.Qwen2Config, tie_word_embeddings=True), tf.Qwen2ForCausalLM),
    "qwen3": (_cfg(tf.Qwen3Config, head_dim=16), tf.Qwen3ForCausalLM),
    "gemma": (_cfg(tf.GemmaConfig, head_dim=16), tf.GemmaForCausalLM),
    "gemma2": (_cfg(tf.Gemma2Config, head_dim=16, query_pre_attn_scalar=16, sliding_window=8), tf.Gemma2ForCausalLM),
    "gemma3_text": (_cfg(tf.Gemma3TextConfig, head_dim=16, sliding_window=8), tf.Gemma3ForCausalLM),
    "olmo2": (_cfg(tf.Olmo2Config, bos_token_id=0, eos_token_id=0, pad_token_id=0), tf.Olmo2ForCausalLM),
    "phi3": (_cfg(tf.Phi3Config, bos_token_id=0, eos_token_id=0, pad_token_id=0), tf.Phi3ForCausalLM),
    "gpt2": (
        lambda: tf.GPT2Config(
            vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=256, bos_token_id=0, eos_token_id=0
        ),
        tf.GPT2LMHeadModel,
    ),
}
FAMILIES = sorted(FAMILY_CONFIGS)


def tiny_llm(model_type: str = "llama", seed: int = 0, **overrides) -> nn.Module:
    """A tiny random causal LM of `model_type`, eval mode, fp32, SDPA attention."""
    make_cfg, cls = FAMILY_CONFIGS[model_type]
    cfg = make_cfg()
    for k, v in overrides.items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    model = cls(cfg)
    # Random LayerNorm/RMSNorm weights, so copying norms is actually tested.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


class TinyTower(nn.Module):
    """(B, 3, 16, 16) -> (B, 16, 24): a conv patchifier standing in for a ViT."""

    embed_dim = 24
    image_size = 16

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, self.embed_dim, kernel_size=4, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch(x).flatten(2).transpose(1, 2)  # (B, 16, 24)


def tiny_tower(seed: int = 1) -> TinyTower:
    torch.manual_seed(seed)
    return TinyTower()


def randomize_new_params(model, seed: int = 2, scale: float = 0.2) -> None:
    """Give zero-initialised new parameters (CASA output, LoRA B) random values, as after training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in model.trainable_parameter_names():
            p = dict(model.named_parameters())[name]
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def greedy_by_full_forward(model, ids: torch.Tensor, images, steps: int) -> torch.Tensor:
    """What greedy `generate(..., eos_token_id=None)` must return, by one full forward per new token
    (B, T + steps). The tiny configs' end-of-sequence token is 0, which random models emit often; the tests turn
    stopping off so that every step is compared."""
    for _ in range(steps):
        logits = model(ids, images=images).logits[:, -1]  # (B, V)
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
    return ids


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


def text_window_inputs(T: int, hidden: int, positions: torch.Tensor | None = None):
    """CasaInputs of T text tokens, all in window 1, and one padding image token (window 0: never attended), so a
    CASA layer runs over a text-only window: with init='copy' it must then equal its block's self-attention."""
    from casa_adapter.casa.windows import CasaInputs

    one = torch.zeros(1, 1, dtype=torch.long)
    index = torch.arange(T)[None] if positions is None else positions
    return CasaInputs(torch.ones(1, T, dtype=torch.long), index, torch.zeros(1, 1, hidden), one, one)


def causal_bias(T: int) -> torch.Tensor:
    """The additive causal mask (1, 1, T, T) a block's self-attention takes."""
    return torch.where(torch.tril(torch.ones(T, T, dtype=torch.bool)), 0.0, float("-inf"))[None, None]


def assert_equal_and_needed(casa_out: torch.Tensor, without: torch.Tensor, sa_out: torch.Tensor) -> None:
    """CASA's output equals SA's (1e-5), and the same layer without the feature under test is > 100x further off."""
    assert torch.allclose(casa_out, sa_out, atol=1e-5), (casa_out - sa_out).abs().max()
    assert (without - sa_out).abs().max() > 100 * (casa_out - sa_out).abs().max()  # the feature matters here
