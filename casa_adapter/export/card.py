"""The model card (`README.md`) of a saved folder: what the model is, how it was built, how to load it.

Hub-ready: YAML front matter (`library_name`, `pipeline_tag`, `base_model`, `tags`) then the facts
from the folder's config, and training facts (`data`, `steps`, `metrics`) when the caller gives them.
"""

from __future__ import annotations

import json
from typing import Any

from casa_adapter.export.hf_config import CasaVLConfig


def model_card(config: CasaVLConfig, trainable: dict[str, int], training: dict[str, Any] | None = None) -> str:
    """README.md text for a folder with `config`; `trainable`: counts per group; `training`: optional
    `{"data": ..., "steps": ..., "metrics": {name: value}}` as the caller knows them."""
    base = config.base.get("name") or "(not recorded)"
    casa, vision = config.casa, config.vision
    tower = vision.get("settings", {}).get("name") if vision.get("kind") != "custom" else vision.get("class")
    front = ["---", "library_name: casa-adapter", "pipeline_tag: image-text-to-text"]
    front += [f"base_model: {json.dumps(base)}", "tags: [casa, vision-language, cross-attention]", "---", ""]
    rows = [
        ("form", f"{config.form} ({'self-contained' if config.form == 'merged' else 'loads onto its base'})"),
        ("base LLM", f"`{base}` ({config.base.get('model_type')}, {config.base.get('dtype')})"),
        ("base fingerprint", f"`{config.base.get('fingerprint')}`"),
        ("fusion / variant", f"{casa.get('fusion')} / {casa.get('variant')}"),
        ("CASA blocks", str(casa.get("layer_indices"))),
        ("vision tower", f"`{tower}` ({vision.get('kind')})"),
        ("LoRA", _lora(config)),
        ("trainable parameters", ", ".join(f"{k} {v:,}" for k, v in trainable.items())),
    ]
    body = ["# casa_adapter vision-language model", "", "| | |", "|---|---|"]
    body += [f"| {name} | {value} |" for name, value in rows]
    body += ["", "## Training", ""]
    training = training or {}
    for key in ("data", "steps"):
        body.append(f"- {key}: {training.get(key, 'not recorded')}")
    for name, value in (training.get("metrics") or {}).items():
        body.append(f"- {name}: {value}")
    body += ["", "## Load", "", "```python", "import casa_adapter  # registers the Auto classes", "import transformers"]
    body += ['model = transformers.AutoModelForImageTextToText.from_pretrained("THIS_FOLDER")']
    body += ['processor = transformers.AutoProcessor.from_pretrained("THIS_FOLDER")', "```", ""]
    return "\n".join(front + body)


def _lora(config: CasaVLConfig) -> str:
    if config.lora is None:
        return "none"
    where = "merged into the base weights" if config.form == "merged" else "in the adapter"
    return f"rank {config.lora['rank']}, alpha {config.lora['alpha']}, {where}"


__all__ = ["model_card"]
