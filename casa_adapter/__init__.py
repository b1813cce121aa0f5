"""casa_adapter: retrofit a decoder-only Hugging Face LLM into a vision-language model with CASA layers.

    >>> import casa_adapter
    >>> model = casa_adapter.wrap(llm, vision="siglip", every=2, lora=casa_adapter.LoraSettings(rank=16))  # doctest: +SKIP
    >>> model.save_adapter("runs/demo/adapter")                                                          # doctest: +SKIP
    >>> model = casa_adapter.load_adapter("runs/demo/adapter", llm)                                      # doctest: +SKIP
"""

from casa_adapter.checkpoint import AdapterError, load_adapter
from casa_adapter.config import CasaSettings, LoraSettings, VisionSettings
from casa_adapter.families import UnsupportedModelError
from casa_adapter.inject import wrap
from casa_adapter.model import CasaModel
from casa_adapter.processor import Processor

__all__ = ["wrap", "load_adapter", "CasaModel", "CasaModule", "CasaSettings", "LoraSettings", "VisionSettings",
           "Processor", "AdapterError", "UnsupportedModelError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """`CasaModule` is imported on first use, so `import casa_adapter` does not pay for Lightning."""
    if name == "CasaModule":
        from casa_adapter.module import CasaModule

        return CasaModule
    raise AttributeError(f"module 'casa_adapter' has no attribute {name!r}")
