"""A `Processor` written to a folder and read back: the tokenizer's files beside `casa_processor.json`.

`save_processor` is what `save_pretrained(..., tokenizer=)` calls; `load_processor` is what
`transformers.AutoProcessor.from_pretrained(folder)` reaches after `import casa_adapter`
(`export.auto`). The JSON holds the marker id, the placeholder, the length limit, the system
prompt (when one was set) and the image transform (`vision.transform.ImageTransform`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from casa_adapter.messages import KEEP
from casa_adapter.processor import Processor
from casa_adapter.vision.transform import ImageTransform

PROCESSOR_FILE = "casa_processor.json"
"""What `save_processor` writes beside the tokenizer's files."""
PROCESSOR_FORMAT = "casa-adapter-processor"
SETTINGS = ("image_token_id", "placeholder", "max_length", "system_prompt")
"""`Processor` arguments the file records (besides the image transform)."""


def save_processor(processor: Processor, directory: str | os.PathLike) -> None:
    """Write `processor` into `directory` (created if missing); its image transform must be an `ImageTransform`
    (what `Processor.from_model` gives), since an arbitrary function cannot be written down."""
    transform = processor.image_transform
    if transform is not None and not isinstance(transform, ImageTransform):
        raise ValueError(
            f"image_transform {transform!r} is not an ImageTransform, so it cannot be written to a folder; "
            "build the processor with Processor.from_model(model, tokenizer) or pass an ImageTransform"
        )
    Path(directory).mkdir(parents=True, exist_ok=True)
    processor.tokenizer.save_pretrained(directory)
    settings = {"format": PROCESSOR_FORMAT, **{k: getattr(processor, k) for k in SETTINGS}}
    if processor.system_prompt is KEEP:
        del settings["system_prompt"]
    settings["image_transform"] = None if transform is None else transform.to_dict()
    (Path(directory) / PROCESSOR_FILE).write_text(json.dumps(settings, indent=2) + "\n")


def load_processor(directory: str | os.PathLike, **overrides: Any) -> Processor:
    """The processor `save_processor` wrote to `directory`; `overrides` (any of `SETTINGS`) win over the file."""
    path = Path(directory) / PROCESSOR_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory}: no {PROCESSOR_FILE}; save the model with a tokenizer "
            "(save_pretrained(..., tokenizer=tok)) to get a processor there"
        )
    settings = json.loads(path.read_text())
    if settings.get("format") != PROCESSOR_FORMAT:
        raise ValueError(f"{path}: not a casa_adapter processor file")
    options = {k: settings[k] for k in SETTINGS if k in settings} | {
        k: v for k, v in overrides.items() if k in SETTINGS
    }
    transform = settings.get("image_transform")
    options["image_transform"] = None if transform is None else ImageTransform.from_dict(transform)
    return Processor(AutoTokenizer.from_pretrained(directory), **options)


class ProcessorLoader:
    """What `AutoProcessor` sees for `casa_adapter_vlm` folders: `from_pretrained` returns a `Processor`."""

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **kwargs: Any) -> Processor:
        return load_processor(directory, **kwargs)


__all__ = ["PROCESSOR_FILE", "ProcessorLoader", "load_processor", "save_processor"]
