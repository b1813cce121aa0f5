"""The backbone side: what casa_adapter knows about the base LLM it wraps.

- `families`: per-`model_type` table of block paths and attention names, structural fallback;
- `access`: `AttentionAccess`, reading one block's attention (heads, projections, norms, RoPE);
- `lora`: LoRA on the frozen LLM through peft, targets chosen by structure;
- `state_keys`: hooks that keep the base's state-dict keys on modules casa_adapter wraps;
- `base_models`: offline base models (the embedded SmolLM2 default, tiny random models, local folders);
- `compat`: shims over transformers versions (cache argument name, packed-sequence keywords).
"""
