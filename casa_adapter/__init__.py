"""casa_adapter: retrofit a decoder-only Hugging Face LLM into a vision-language model with CASA layers.

    import casa_adapter
    model = casa_adapter.wrap(llm, vision="siglip", every=2, lora=casa_adapter.LoraSettings(rank=16))
    model.save_adapter("runs/demo/adapter")
    model = casa_adapter.load_adapter("runs/demo/adapter", llm)   # a fresh copy of the same base

The package's map is docs/architecture.md.
"""

from casa_adapter.adapters.manifest import AdapterError
from casa_adapter.backbone.families import UnsupportedModelError
from casa_adapter.config import CasaSettings, LoraSettings, VisionSettings
from casa_adapter.export.auto import register as _register_auto_classes
from casa_adapter.fusion.build import load_adapter, wrap
from casa_adapter.fusion.casa_model import CasaModel
from casa_adapter.processor import Processor

__all__ = [
    "wrap",
    "load_adapter",
    "CasaModel",
    "CasaModule",
    "CasaSettings",
    "LoraSettings",
    "VisionSettings",
    "Processor",
    "AdapterError",
    "UnsupportedModelError",
]
__version__ = "0.1.0"

_register_auto_classes()  # AutoConfig / AutoModelForImageTextToText / AutoProcessor know casa_adapter folders


def __getattr__(name: str):
    """`CasaModule` is imported on first use, so `import casa_adapter` does not pay for Lightning."""
    if name == "CasaModule":
        from casa_adapter.training.module import CasaModule

        return CasaModule
    raise AttributeError(f"module 'casa_adapter' has no attribute {name!r}")
