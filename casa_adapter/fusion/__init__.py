"""The two fusions and what they share: how images meet the LLM.

- `base`: `FusionModel`, the LLM + vision encoder, the trainable set, image encoding, adapter saving;
- `casa_model`: `CasaModel`, CASA layers beside self-attention (the method);
- `insertion`: `InsertionModel`, LLaVA-style token insertion (the A/B baseline);
- `stream`: streaming sessions for both (`model.stream()`);
- `build`: `wrap()`, `load_adapter()`, `build_from_settings()`: the one module that builds models.
"""
