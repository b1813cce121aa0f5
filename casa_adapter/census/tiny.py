"""Tiny random configs for any causal-LM `model_type` transformers ships, made from its default config.

`tiny_config(model_type)` starts from the config class's defaults and shrinks every size it knows
(`SIZES`: widths, heads, layers, vocabulary, experts, MLA ranks, state sizes), keeps per-layer lists
(`layer_types`, hybrid patterns) consistent with the new depth while keeping one layer of each kind,
and moves special token ids into the tiny vocabulary. `OVERRIDES` holds what a family needs beyond
that. `tiny_base(model_type)` builds the model with seed 0 in eval mode, fp32, on CPU.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

VOCAB = 96
"""Vocabulary of every tiny model (ids 0..95)."""
LAYERS = 4
"""Decoder blocks of every tiny model (hybrids keep at least one block of each kind among them)."""

SIZES: dict[str, int] = {
    # widths and heads
    "hidden_size": 64, "n_embd": 64, "d_model": 64, "dim": 64, "embed_dim": 64, "n_embed": 64,
    "num_attention_heads": 4, "n_head": 4, "n_heads": 4, "num_heads": 4, "decoder_attention_heads": 4,
    "num_key_value_heads": 2, "n_kv_heads": 2, "num_kv_heads": 2, "multi_query_group_num": 2,
    "head_dim": 16, "kv_channels": 16, "attention_head_dim": 16,
    "intermediate_size": 96, "ffn_hidden_size": 96, "n_inner": 96, "ffn_dim": 96, "d_ff": 96,
    "decoder_ffn_dim": 96, "mlp_dim": 96, "shared_intermediate_size": 96, "ffn_dim_multiplier": 1,
    "first_dense_intermediate_size": 96, "mlp_only_intermediate_size": 96,
    # depth, vocabulary, positions
    "num_hidden_layers": LAYERS, "n_layer": LAYERS, "n_layers": LAYERS, "num_layers": LAYERS,
    "decoder_layers": LAYERS,
    "vocab_size": VOCAB, "max_position_embeddings": 256, "n_positions": 256, "n_ctx": 256,
    "max_sequence_length": 256, "seq_length": 256,
    # mixture of experts
    "num_experts": 4, "n_routed_experts": 4, "num_local_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "moe_k": 2, "top_k": 2, "moe_topk": 2, "num_experts_per_token": 2,
    "moe_intermediate_size": 32, "expert_intermediate_size": 32, "shared_expert_intermediate_size": 32,
    "n_shared_experts": 1, "num_shared_experts": 1, "n_group": 1, "topk_group": 1,
    "first_k_dense_replace": 1,
    # multi-head latent attention
    "q_lora_rank": 32, "kv_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    # state-space and linear-attention mixers
    "state_size": 8, "mamba_d_state": 8, "ssm_state_size": 8, "mamba_n_heads": 4, "mamba_d_head": 32,
    "mamba_head_dim": 32, "mamba_n_groups": 1, "n_groups": 1, "mamba_expand": 2, "mamba_d_conv": 4,
    "linear_num_value_heads": 4, "linear_num_key_heads": 2, "linear_key_head_dim": 16,
    "linear_value_head_dim": 16, "mamba_chunk_size": 16, "chunk_size": 16,
    # partial rotary computed from an absolute width
    "rotary_dim": 8, "rotary_emb_dim": 8,
}  # fmt: skip
"""Config attribute -> tiny value, set wherever the default config has the attribute (and it is not None)."""
FILL_NONE = ("head_dim", "num_key_value_heads")
"""`SIZES` keys set even where the default is None (a None the model code does not derive: Ministral, Nemotron)."""

OVERRIDES: dict[str, dict] = {
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1),
    "bamba": dict(attn_layer_indices=[1, 3]),
    "deepseek_v2": dict(num_experts_per_tok=2),
    "dots1": dict(n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1),  # None by default
    "lfm2_moe": dict(layer_types=["conv", "full_attention", "conv", "full_attention"]),  # None by default
    # all-mamba by default, whose cache then has no attention layer to count positions with
    "granitemoehybrid": dict(layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"]),
    # layer indices inside its lists (the indexed-attention layers, the layer each one takes its keys from)
    "kolibri1_1": dict(index_layers=[3], kv_source_layers=[0, 1, 2, 3], mlp_only_layers=[0]),
}
"""model_type -> attributes set after `SIZES`, for what the generic shrink gets wrong."""


def _keep_layers(kinds: list, n: int) -> list[int]:
    """n layer indices of a per-layer list: the first layer of each kind, then the earliest others, in order."""
    firsts = sorted({k: i for i, k in reversed(list(enumerate(kinds)))}.values())[:n]
    rest = [i for i in range(len(kinds)) if i not in firsts][: n - len(firsts)]
    return sorted(firsts + rest)


def _shrink_layer_lists(cfg: PretrainedConfig, depth: int, n: int) -> None:
    """Cut every per-layer list or pattern string (length `depth`) to the same n layers."""
    lists = {k: v for k, v in vars(cfg).items() if isinstance(v, (list, tuple, str)) and len(v) == depth and depth > n}
    kinds = next((list(v) for k, v in lists.items() if "type" in k or "pattern" in k), None)
    keep = _keep_layers(kinds or [0] * depth, n)
    for k, v in lists.items():
        picked = [v[i] for i in keep]
        setattr(cfg, k, "".join(picked) if isinstance(v, str) else type(v)(picked))


def _small(cfg: PretrainedConfig, overrides: dict) -> PretrainedConfig:
    depth = next((getattr(cfg, k) for k in ("num_hidden_layers", "n_layer", "num_layers") if hasattr(cfg, k)), 0)
    for key, value in SIZES.items():
        present = getattr(cfg, key, None) is not None or (key in FILL_NONE and hasattr(cfg, key))
        if present and not isinstance(getattr(cfg, key), (list, dict)):
            with contextlib.suppress(AttributeError):  # a derived property (Falcon's head_dim)
                setattr(cfg, key, value)
    if getattr(cfg, "qk_rope_head_dim", None) is not None and getattr(cfg, "head_dim", None) is not None:
        cfg.head_dim = cfg.qk_rope_head_dim  # multi-head latent attention rotates head_dim = the rope part
    if isinstance(depth, int):
        _shrink_layer_lists(cfg, depth, LAYERS)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value >= VOCAB:
            setattr(cfg, key, VOCAB - 1)
        elif isinstance(value, list):
            setattr(cfg, key, [min(v, VOCAB - 1) for v in value])
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_config(model_type: str) -> PretrainedConfig:
    """The default config of `model_type`, shrunk, its sub-configs (`text_config`, ...) too."""
    cfg = CONFIG_MAPPING[model_type]()
    for sub in vars(cfg).values():
        if isinstance(sub, PretrainedConfig):
            _small(sub, OVERRIDES.get(sub.model_type, {}))
    return _small(cfg, OVERRIDES.get(model_type, {}))


MAX_PARAMETERS = 4_000_000
"""A tiny base larger than this is refused before its weights are allocated (a size the shrink missed)."""


def tiny_base(model_type: str, seed: int = 0) -> nn.Module:
    """A tiny random causal LM of `model_type` (the class `AutoModelForCausalLM` maps it to), eval mode, fp32.

    Raises ValueError when the shrunk config still has more than `MAX_PARAMETERS` parameters."""
    cfg = tiny_config(model_type)
    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
    if n > MAX_PARAMETERS:
        raise ValueError(f"model_type {model_type!r}: the tiny config still has {n:,} parameters")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).eval()


__all__ = ["FILL_NONE", "LAYERS", "OVERRIDES", "SIZES", "VOCAB", "tiny_base", "tiny_config"]
