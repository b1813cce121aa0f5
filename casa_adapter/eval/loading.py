"""The model to evaluate: an adapter on its base, or a recipe's model (trained or not).

- `--adapter DIR --base NAME_OR_PATH`: the base from `load_base` (in the dtype the adapter was
  saved with: the fingerprint covers it), then `load_adapter`. The manifest is checked first, so a
  wrong directory or an adapter whose tower cannot be rebuilt fails before the base is loaded.
- `--recipe RECIPE.yaml`: the recipe's `model.init_args.model` block as `ModelSettings` (a recipe, or the
  `config.yaml` a training run saves), built by
  `casa_adapter.fusion.build.build_from_settings` (untrained, a zero-shot baseline, unless the recipe names an
  adapter). `--adapter` / `--base` given with it replace the recipe's. The recipe also supplies
  defaults: its `system_prompt`, its validation shards, its video frame sampling.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from casa_adapter.adapters.manifest import AdapterError, read_manifest
from casa_adapter.config import CasaSettings, LoraSettings, ModelSettings, VisionSettings
from casa_adapter.fusion.build import build_from_settings


@dataclass
class Recipe:
    """What a training recipe contributes to an evaluation."""

    model: ModelSettings
    """The recipe's `model.init_args.model` block."""
    system_prompt: str | None = None
    """The recipe's `model.init_args.system_prompt` (what training used)."""
    val: list[str] = field(default_factory=list)
    """Shard specs of the recipe's validation data (`data.init_args.val`, or the demo set's `val/`)."""
    decode: dict[str, Any] = field(default_factory=dict)
    """`video_fps` / `max_frames` from the recipe's `data.init_args.settings`, when set."""


def _args(node: Any) -> Any:
    """A `{class_path, init_args}` node (LightningCLI's saved `config.yaml`) -> its init_args; else the node."""
    if isinstance(node, dict) and "class_path" in node:
        return node.get("init_args") or {}
    return node


def model_settings(block: dict | None) -> ModelSettings:
    """A recipe's `model.init_args.model` mapping -> `ModelSettings` (nested settings from dicts, or from
    `{class_path, init_args}` nodes as in the `config.yaml` LightningCLI saves with a run)."""
    block = {key: _args(value) for key, value in (_args(block) or {}).items()}
    known = {f.name for f in dataclasses.fields(ModelSettings)}
    unknown = sorted(set(block) - known)
    if unknown:
        raise ValueError(f"recipe model block: unknown field(s) {unknown}; known fields are {sorted(known)}")
    vision = block.pop("vision", None)
    if isinstance(vision, str):
        vision = {"name": vision}
    lora = block.pop("lora", None)
    return ModelSettings(
        casa=CasaSettings.from_dict(block.pop("casa", None) or {}),
        vision=VisionSettings.from_dict(vision or {}),
        lora=LoraSettings.from_dict(lora) if lora else None,
        **block,
    )


def _val_specs(data: dict) -> list[str]:
    """Shard specs of a recipe's validation sources (spec strings, lists, `{shards: ...}` dicts, demo)."""
    val = data.get("val")
    if val is None and isinstance(data.get("demo"), dict):
        val = str(Path(data["demo"].get("out", "data/demo")) / "val")
    items = val if isinstance(val, list) else [] if val is None else [val]
    return [item["shards"] if isinstance(item, dict) else str(item) for item in items]


def read_recipe(path: str) -> Recipe:
    """Read the parts of a training recipe (YAML) an evaluation uses."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"recipe {path} does not exist")
    try:
        recipe = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"recipe {path} is not valid YAML: {e}") from None
    module = _args(recipe.get("model")) or {}
    data = _args(recipe.get("data")) or {}
    settings = _args(data.get("settings")) or {}
    return Recipe(
        model=model_settings(module.get("model")),
        system_prompt=module.get("system_prompt"),
        val=_val_specs(data),
        decode={k: settings[k] for k in ("video_fps", "max_frames", "blank_images") if k in settings},
    )


def check_adapter(directory: str) -> dict:
    """The adapter's manifest, after checking that the command line can load it."""
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"adapter directory {directory} does not exist")
    manifest = read_manifest(directory)
    vision = manifest["vision"]
    if vision.get("kind") == "custom":
        raise AdapterError(
            f"{directory}: trained with a custom vision tower ({vision.get('class')}), which the command line cannot "
            "rebuild. Evaluate from Python instead: model = casa_adapter.load_adapter(DIR, llm, vision=tower), then "
            "casa_adapter.eval.evaluate(model, Processor.from_model(model, tokenizer), EvalSettings(shards=[...]))."
        )
    return manifest


def resolve_model(adapter: str | None, base: str | None, recipe: Recipe | None) -> ModelSettings:
    """The `ModelSettings` to build from `--adapter` / `--base` / `--recipe` (see the module docstring)."""
    manifest = check_adapter(adapter) if adapter else None
    if recipe is None and not (manifest and base):
        trained_on = f" (this adapter was trained on {manifest['base_model']['name']!r})" if manifest else ""
        raise ValueError(f"give --adapter DIR and --base NAME_OR_PATH{trained_on}, or --recipe RECIPE.yaml")
    settings = recipe.model if recipe is not None else ModelSettings(base=base)
    settings = dataclasses.replace(settings, base=base or settings.base, adapter=adapter or settings.adapter)
    if settings.adapter and manifest is None:
        manifest = check_adapter(settings.adapter)
    if manifest is not None:  # the base's fingerprint covers its dtype: load it as the adapter was saved
        settings.dtype = manifest["base_model"].get("dtype") or settings.dtype
    return settings


def load_model(settings: ModelSettings):
    """(model in eval mode, tokenizer) for `settings` (`casa_adapter.fusion.build.build_from_settings`)."""
    model, tokenizer = build_from_settings(settings)
    return model.eval(), tokenizer
