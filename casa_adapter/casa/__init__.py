"""The CASA method: windows, the layer and its variants, the window cache, the marker, attaching.

- `windows`: `CasaInputs` (the one channel images take to the layers) and the window rule;
- `cache`: what the layers keep between `generate` / streaming calls (`LayerCache`, `CasaCache`);
- `layer`: `CasaLayer`, the attention computation all variants share;
- `variants`: one class per `CasaSettings.variant` (`casa`, `ca`, `shared`);
- `parallel`: `CasaAttention`, self-attention and a CASA layer side by side in a block;
- `marker`: `MarkerEmbedding`, the learned image-marker row beside the frozen token table;
- `attach`: placing the layers in a loaded LLM (and rolling that back);
- `kernels/`: the CASA attention kernels (dense reference, windowed, flash varlen, `auto`).
"""
