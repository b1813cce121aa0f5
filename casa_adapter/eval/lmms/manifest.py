"""The `lmms_eval.models` entry point: how lmms-eval (0.7) finds `--model casa_adapter`.

pyproject.toml declares `casa_adapter = "casa_adapter.eval.lmms.manifest:manifest"` in the
`lmms_eval.models` group; lmms-eval's model registry calls `manifest()` when it loads and
imports `CasaLmms` only when the model is asked for.
"""

from __future__ import annotations

MODEL_ID = "casa_adapter"
"""The name `--model` takes."""


def manifest():
    """lmms-eval's `ModelManifest` for `CasaLmms` (a "simple" model: task prompt text plus visuals)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path="casa_adapter.eval.lmms.model.CasaLmms")


__all__ = ["MODEL_ID", "manifest"]
