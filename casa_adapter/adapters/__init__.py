"""Adapters on disk: what a trained adapter is and how it is written and read. No model code here.

- `fingerprint`: sha256 identities of a base model's and a custom tower's weights;
- `manifest`: `manifest.json` (format version, base, settings, names), `AdapterError`;
- `io`: the safetensors file, atomic saving, checked reading, copying tensors into a rebuilt model.

`casa_adapter.load_adapter` (in `casa_adapter.fusion.build`) rebuilds the model and uses these.
"""
