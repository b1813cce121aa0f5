"""casa_adapter: retrofit a decoder-only Hugging Face LLM into a vision-language model with CASA layers."""
