"""The structural fallback: a `FamilySpec` guessed from module names for a `model_type` not in `FAMILIES`.

1. **blocks**: the first of `BLOCK_PATHS` that is an `nn.ModuleList`, else the shortest-named
   `nn.ModuleList` with as many entries as the (text) config has layers, outside any vision or audio tower;
2. **attention**: the first of `ATTENTION_NAMES` that holds a readable attention in some block (hybrid
   stacks: not every block needs one);
3. **projections**: `q_proj`/`k_proj`/`v_proj` (`separate`), else a stacked `qkv_proj` (`fused_qkv`) or a
   GPT-2 `Conv1D` `c_attn` (`conv1d_qkv`), with the first output projection of `OUT_NAMES`; multi-head
   latent attention (`kv_a_proj_with_mqa`, `q_a_proj`) gets `own` projections; q/k norms by name;
4. **rope**: `True` when the attention's `forward` takes `position_embeddings`; where it declares them
   optional (`... | None`: NoPE blocks get None, as in Beam and LaraMini) CASA uses no positions in the
   blocks that get none (`rope_optional`). An attention that computes its rotary embedding itself (it holds
   a `rotary_emb` module and takes no `position_embeddings`) is refused: the fallback cannot tell how it calls
   it; a table entry with `rope_source="position_ids"` covers the Llama-style `rotary_emb(x, position_ids)`.

Grouped fused projections (`query_key_value` of GPT-NeoX and friends) cannot be told from stacked ones by
name, so the fallback never guesses them: those families are table entries.
"""

from __future__ import annotations

import inspect

from torch import nn

from casa_adapter.backbone.spec import FamilySpec, UnsupportedModelError, get_path, text_config

BLOCK_PATHS = ("model.layers", "transformer.h", "model.decoder.layers", "transformer.layers", "transformer.blocks")
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention", "mixer")
OUT_NAMES = ("o_proj", "out_proj", "dense", "c_proj", "Wo")
NORM_NAMES = (("q_norm", "k_norm"), ("q_layernorm", "k_layernorm"))
_MLA_NAMES = ("kv_a_proj_with_mqa", "q_a_proj")
_SKIP = ("vision", "audio", "visual", "encoder", "image")


def _blocks_path(llm: nn.Module, model_type: str) -> str:
    n_layers = getattr(text_config(llm.config), "num_hidden_layers", None)
    path = next((p for p in BLOCK_PATHS if isinstance(get_path(llm, p), nn.ModuleList)), None)
    if path is not None:
        return path
    lists = [
        name
        for name, m in llm.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) == n_layers and not any(s in name.lower() for s in _SKIP)
    ]
    if not lists:
        raise UnsupportedModelError(
            f"model_type {model_type!r}: no decoder-block list found (looked for {', '.join(BLOCK_PATHS)}, or any"
            f" module list with {n_layers} blocks). Add a FamilySpec to casa_adapter.backbone.families.FAMILIES"
            " (docs/adding-a-family.md)."
        )
    return min(lists, key=lambda name: (name.count("."), len(name)))


def _projections(attn: nn.Module) -> dict | None:
    """The projection fields of a FamilySpec that reads `attn`, or None when its names are not known."""
    out = next((o for o in OUT_NAMES if isinstance(getattr(attn, o, None), nn.Module)), None)
    if out is None:
        return None
    if any(hasattr(attn, n) for n in _MLA_NAMES):
        return dict(layout="own", o=out)
    if all(isinstance(getattr(attn, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj")):
        return dict(layout="separate", o=out)
    if isinstance(getattr(attn, "qkv_proj", None), nn.Linear):
        return dict(layout="fused_qkv", qkv="qkv_proj", o=out)
    if type(getattr(attn, "c_attn", None)).__name__ == "Conv1D":
        return dict(layout="conv1d_qkv", qkv="c_attn", o=out)
    return None


def structural_spec(llm: nn.Module, model_type: str) -> FamilySpec:
    """Guess a FamilySpec from module names for a model_type not in FAMILIES (see the module docstring)."""
    path = _blocks_path(llm, model_type)
    blocks = get_path(llm, path)
    found = None
    for name in ATTENTION_NAMES:
        for block in blocks:
            fields = _projections(getattr(block, name, None) or nn.Module())
            if fields is not None:
                found = (name, getattr(block, name), fields)
                break
        if found:
            break
    if found is None:
        children = sorted({n for b in blocks for n, _ in b.named_children()})
        raise UnsupportedModelError(
            f"model_type {model_type!r}: no decoder block has a self-attention with known projection names (looked"
            f" for {'/'.join(ATTENTION_NAMES)} holding q_proj/k_proj/v_proj, a stacked qkv_proj or a Conv1D c_attn,"
            f" and an output projection {'/'.join(OUT_NAMES)}); block children are {children}. It may not be an"
            " attention model, or its attention needs a FamilySpec (docs/adding-a-family.md)."
        )
    name, attn, fields = found
    positions = inspect.signature(type(attn).forward).parameters.get("position_embeddings")
    takes_positions = positions is not None
    optional = takes_positions and "None" in str(positions.annotation)
    if not takes_positions and isinstance(getattr(attn, "rotary_emb", None), nn.Module):
        raise UnsupportedModelError(
            f"model_type {model_type!r}: {type(attn).__name__} computes its rotary embedding itself and takes no"
            " `position_embeddings`, so CASA cannot give its keys the positions self-attention uses; add a"
            " FamilySpec, with rope_source='position_ids' where it calls `rotary_emb(x, position_ids)` (Moshi;"
            " docs/adding-a-family.md)"
        )
    norms = next((n for n in NORM_NAMES if hasattr(attn, n[0]) and hasattr(attn, n[1])), (None, None))
    spec = FamilySpec(
        blocks=path, attention=name, q_norm=norms[0], k_norm=norms[1], rope=takes_positions, rope_optional=optional,
        **fields,
    )  # fmt: skip
    if spec.layout == "own":
        cfg = text_config(llm.config)
        head_dim = getattr(cfg, "v_head_dim", None) or getattr(attn, "head_dim", None)
        spec = FamilySpec(**{**vars(spec), "head_dim": head_dim, "kv_heads": cfg.num_attention_heads})
    return spec


__all__ = ["ATTENTION_NAMES", "BLOCK_PATHS", "OUT_NAMES", "structural_spec"]
