"""Exports: a wrapped model written in formats that other tools read without casa_adapter.

- `save_peft_lora(model, dir)` (`peft_lora`): the LoRA of the text LLM as a standard peft adapter
  (`adapter_config.json` + `adapter_model.safetensors`), for `peft.PeftModel.from_pretrained(base, dir)`;
- `save_text_llm(model, dir, tokenizer=None)` (`text_llm`): the text LLM with LoRA merged and no
  CASA layers, as a plain `save_pretrained` folder for `AutoModelForCausalLM.from_pretrained(dir)`.

Both leave the wrapped model as it was and write their folder atomically (`casa_adapter.atomic`).
The `save_pretrained` forms of the whole vision-language model and a CLI join these.
"""

from casa_adapter.export.peft_lora import save_peft_lora
from casa_adapter.export.text_llm import save_text_llm

__all__ = ["save_peft_lora", "save_text_llm"]
