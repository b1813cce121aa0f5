"""Exports: a trained model in the forms other tools read (docs/export.md).

- `hf_config`, `auto`: `CasaVLConfig` (model_type `casa_adapter_vlm`) and the Auto-class registration
  that `import casa_adapter` performs;
- `pretrained`, `load`, `card`: `save_pretrained` in the adapter form (references its base) and the
  merged form (self-contained), reading them back, the model card;
- `processor_files`: the `Processor` in a folder (`save_processor`, `load_processor`);
- `peft_lora`: the text LLM's LoRA as a standard peft adapter (`save_peft_lora`);
- `text_llm`: the text LLM with LoRA merged, as a plain HF causal-LM folder (`save_text_llm`);
- `sources`, `command`: `casa-adapter export` from adapter dirs, saved folders and resume checkpoints.

Every form is written atomically (`casa_adapter.atomic`) and leaves the wrapped model as it was.
"""

from casa_adapter.export.peft_lora import save_peft_lora
from casa_adapter.export.text_llm import save_text_llm

__all__ = ["save_peft_lora", "save_text_llm"]
