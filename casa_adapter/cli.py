"""The `casa-adapter` console script.

Lightning 2.x has no `lightning run RECIPE` command for a LightningModule (its `lightning` console
name belongs to another package, and `fabric run` runs scripts), so this script carries the recipe
shape itself, on top of `LightningCLI`:

    casa-adapter run recipes/demo.yaml [--trainer.max_steps=100 ...]   # = fit --config RECIPE
    casa-adapter fit|validate --config RECIPE [...]                    # LightningCLI, unchanged
    casa-adapter data ...                                              # casa_adapter.data.commands
    casa-adapter eval ...                                              # casa_adapter.eval
    casa-adapter export ...                                            # casa_adapter.export.command
    casa-adapter bench ...                                             # casa_adapter.bench.commands
    casa-adapter study ...                                             # casa_adapter.study
    casa-adapter serve SRC ...                                         # casa_adapter.serve.command
    casa-adapter families [--census]                                   # casa_adapter.census.command
"""

from __future__ import annotations

import sys
import warnings

USAGE = """usage: casa-adapter COMMAND [ARGS]

Train, evaluate and benchmark CASA vision-language adapters on any Hugging Face decoder-only LLM.

training (LightningCLI; recipes name casa_adapter.CasaModule and casa_adapter.data.CasaDataModule):
  run RECIPE [OVERRIDES]   train with a recipe: the same as `fit --config RECIPE [OVERRIDES]`
                           (e.g. casa-adapter run recipes/demo.yaml --trainer.max_steps=50;
                            resume: --ckpt_path=last; show the full config: --print_config)
  fit       --config RECIPE  train (LightningCLI fit)
  validate  --config RECIPE  validation loss and answer accuracy

evaluation (casa-adapter eval --help):
  eval --adapter DIR --base NAME --shards SPEC   generate answers on shards, write JSONL, print metrics

export (casa-adapter export --help):
  export SRC --out DIR [--merged | --peft | --text-llm] [--base NAME]
                           an adapter dir, saved folder or .ckpt -> a save_pretrained folder (adapter or
                           merged form), a peft LoRA adapter, or a plain HF text LLM

serving (casa-adapter serve --help; docs/serving.md):
  serve SRC [--port 8000]  an OpenAI-compatible /v1/chat/completions and video sessions over HTTP,
                           every conversation decoded together in one batch

data (casa-adapter data --help):
  data check SHARDS...     good/bad sample counts by reason (local files, URLs, s3://, gs://, pipe:)
  data bench               samples/s reading shards: local files vs streamed over loopback HTTP
  data convert llava|folder   LLaVA json or image+caption folders -> WebDataset shards
  data make-demo           generate the embedded demo dataset (offline, deterministic)

benchmarks, CASA vs token insertion side by side (casa-adapter bench --help):
  bench stream | train | kernel

families (casa-adapter families --help):
  families [--census]      the family table; --census: every causal-LM type built tiny, wrapped and
                           checked, the table printed and written into docs/families.md

design study (casa-adapter study --help):
  study [--arms casa,replace_lora,...] [--seeds 0,1,2] [--steps N] [--minutes M]   train each arm and
                           seed from one recipe (equal steps, and equal wall time with --minutes),
                           evaluate, write docs/results.md with mean ± SE tables and plots
"""

LIGHTNING_COMMANDS = ("fit", "validate")  # predictions on shards: `casa-adapter eval`


def lightning_main(argv: list[str]) -> int:
    """LightningCLI over CasaModule / CasaDataModule with the project's callbacks and atomic checkpoints."""
    from casa_adapter.training.cli import CasaCLI

    # sys.argv stays as it is: Lightning's DDP launcher starts the other ranks by re-running it
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    CasaCLI(args=argv)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run":
        if not rest or rest[0].startswith("-"):
            print("usage: casa-adapter run RECIPE.yaml [--key=value ...]", file=sys.stderr)
            return 2
        return lightning_main(["fit", "--config", rest[0], *rest[1:]])
    if command in LIGHTNING_COMMANDS:
        return lightning_main(argv)
    if command == "data":
        from casa_adapter.data.commands import main as data_main

        return data_main(rest)
    if command == "eval":
        from casa_adapter.eval import main as eval_main

        return eval_main(rest)
    if command == "export":
        from casa_adapter.export.command import main as export_main

        return export_main(rest)
    if command == "bench":
        from casa_adapter.bench.commands import main as bench_main

        return bench_main(rest)
    if command == "families":
        from casa_adapter.census.command import main as families_main

        return families_main(rest)
    if command == "study":
        from casa_adapter.study import main as study_main

        return study_main(rest)
    if command == "serve":
        from casa_adapter.serve.command import main as serve_main

        return serve_main(rest)
    print(f"casa-adapter: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
