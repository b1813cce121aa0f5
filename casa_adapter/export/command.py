"""`casa-adapter export`: write a trained model in the form another tool reads (docs/export.md).

    casa-adapter export SRC --out DIR                # save_pretrained, adapter form (references the base)
    casa-adapter export SRC --out DIR --merged       # save_pretrained, self-contained
    casa-adapter export SRC --out DIR --peft         # the text LLM's LoRA as a standard peft adapter
    casa-adapter export SRC --out DIR --text-llm     # the text LLM, LoRA merged, as a plain HF causal LM
    [--base NAME_OR_PATH]                            # where the base is, when SRC's record does not load here

SRC: an adapter directory (any periodic `step-N` or `final`), a `save_pretrained` folder, or a
Lightning resume checkpoint (`.ckpt`) written by `casa_adapter.CasaModule`.
"""

from __future__ import annotations

import argparse
import sys
import time

from casa_adapter.adapters.manifest import AdapterError
from casa_adapter.export.peft_lora import save_peft_lora
from casa_adapter.export.sources import load_source
from casa_adapter.export.text_llm import save_text_llm


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="casa-adapter export", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="adapter directory, save_pretrained folder, or resume checkpoint (.ckpt)")
    p.add_argument("--out", required=True, help="folder to write (replaced atomically if it exists)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--merged", action="store_true", help="self-contained save_pretrained folder")
    form.add_argument("--peft", action="store_true", help="the text LLM's LoRA as a peft adapter")
    form.add_argument("--text-llm", action="store_true", help="the text LLM with LoRA merged, no CASA")
    p.add_argument("--base", help="the base LLM (name, folder or .gguf) when the source's record does not load here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    start = time.perf_counter()
    try:
        model, tokenizer = load_source(args.source, base=args.base)
        if args.peft:
            out = save_peft_lora(model, args.out)
        elif args.text_llm:
            out = save_text_llm(model, args.out, tokenizer=tokenizer)
        else:
            out = model.save_pretrained(args.out, merged=args.merged, tokenizer=tokenizer)
    except (AdapterError, FileNotFoundError, ValueError) as e:
        print(f"casa-adapter export: {e}", file=sys.stderr)
        return 2
    form = "peft LoRA" if args.peft else "text LLM" if args.text_llm else "merged" if args.merged else "adapter"
    print(f"wrote {out} ({form} form) in {time.perf_counter() - start:.1f} s")
    return 0


__all__ = ["main", "parser"]
