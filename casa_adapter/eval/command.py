"""`casa-adapter eval`: argument parsing and the run of one evaluation (see docs/evaluation.md).

casa-adapter eval --adapter DIR --base NAME_OR_PATH --shards SPEC [--shards SPEC ...]
                  [--out preds.jsonl] [--metrics exact_match,vqa,anls,relaxed] [--max-new-tokens 16]
                  [--batch-size 8] [--limit N] [--system-prompt TEXT] [--json PATH] [--quiet]
                  [--protocol kyutai --task BENCHMARK]
casa-adapter eval --recipe RECIPE.yaml [--adapter DIR] [--shards SPEC ...] [...]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from casa_adapter.adapters.manifest import AdapterError
from casa_adapter.data.sources import expand_shards
from casa_adapter.eval.loading import Recipe, load_model, read_recipe, resolve_model
from casa_adapter.eval.report import print_results
from casa_adapter.eval.run import evaluate
from casa_adapter.eval.settings import DEFAULT_METRICS, EvalSettings
from casa_adapter.metrics.collection import canonical_name
from casa_adapter.processor import Processor


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="casa-adapter eval",
        description=(
            "Generate answers for every sample of WebDataset shards, write them as JSONL and print VQA metrics "
            "overall and per question type (docs/evaluation.md)."
        ),
    )
    p.add_argument("--adapter", metavar="DIR", help="adapter directory (manifest.json + adapter.safetensors)")
    p.add_argument(
        "--base",
        metavar="NAME_OR_PATH",
        help="the adapter's base LLM: 'smollm2-135m', 'tiny', a local HF folder, a .gguf file or a cached hub id",
    )
    p.add_argument(
        "--recipe",
        metavar="RECIPE.yaml",
        help="training recipe YAML: evaluate its model (untrained unless it names an "
        "adapter; --adapter/--base replace the recipe's)",
    )
    p.add_argument(
        "--shards",
        action="append",
        metavar="SPEC",
        help="shard spec (path, brace pattern, glob, folder); repeatable. "
        "Default with --recipe: the recipe's validation data",
    )
    p.add_argument("--out", default="preds.jsonl", metavar="PATH", help="predictions JSONL (default: preds.jsonl)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="also write the metrics as JSON here")
    p.add_argument(
        "--metrics",
        metavar="NAMES",
        help=f"comma-separated metric names or aliases (default: {','.join(DEFAULT_METRICS)})",
    )
    p.add_argument(
        "--protocol",
        metavar="NAME",
        help="a named evaluation protocol, e.g. 'kyutai' (prompt suffix, answer clean-up and the metric of "
        "--task, lmms-eval's scoring; replaces --metrics)",
    )
    p.add_argument(
        "--task",
        metavar="BENCHMARK",
        help="with --protocol: the benchmark the shards hold (chartqa, docvqa, infovqa, textvqa, vqav2, ...)",
    )
    p.add_argument("--max-new-tokens", type=int, default=16, metavar="N", help="greedy tokens per answer (default: 16)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="samples per generate call (default: 8)")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate at most N samples")
    p.add_argument(
        "--system-prompt",
        metavar="TEXT",
        help="system message for chats without one ('' for an empty one); default: "
        "the recipe's, else the chat template's own behaviour",
    )
    p.add_argument(
        "--video-fps", type=float, metavar="F", help="video frames kept per second (default: the recipe's, else 2)"
    )
    p.add_argument(
        "--max-frames", type=int, metavar="N", help="most frames kept per video (default: the recipe's, else 16)"
    )
    p.add_argument(
        "--blank-images",
        action="store_true",
        help="replace every image by a grey one (the text-only control; "
        "default: the recipe's data.settings.blank_images)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def eval_settings(args: argparse.Namespace, recipe: Recipe | None) -> EvalSettings:
    """`EvalSettings` from the arguments; unset ones come from the recipe, then the defaults."""
    decode = recipe.decode if recipe else {}
    shards = args.shards or (recipe.val if recipe else [])
    if not shards:
        raise ValueError("give --shards SPEC (or a --recipe with validation data)")
    optional = {
        "video_fps": args.video_fps if args.video_fps is not None else decode.get("video_fps"),
        "max_frames": args.max_frames if args.max_frames is not None else decode.get("max_frames"),
        "blank_images": True if args.blank_images else decode.get("blank_images"),
    }
    if args.protocol and args.metrics:
        raise ValueError("--protocol picks the metric of --task; give either --protocol or --metrics")
    metrics = args.metrics or ",".join(DEFAULT_METRICS)
    return EvalSettings(
        shards=shards,
        out=args.out,
        json_path=args.json_path,
        metrics=tuple(canonical_name(m) for m in metrics.split(",") if m.strip()),
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        limit=args.limit,
        show_progress=not args.quiet,
        protocol=args.protocol,
        task=args.task,
        **{k: v for k, v in optional.items() if v is not None},
    )


def system_prompt(args: argparse.Namespace, recipe: Recipe | None) -> dict:
    """The `Processor`'s `system_prompt` keyword: `--system-prompt`, else the recipe's, else none given."""
    prompt = args.system_prompt if args.system_prompt is not None else (recipe.system_prompt if recipe else None)
    return {} if prompt is None else {"system_prompt": prompt}


def run(args: argparse.Namespace) -> dict:
    """Check the inputs (before the slow model load), load the model, evaluate, print, write `--json`."""
    recipe = read_recipe(args.recipe) if args.recipe else None
    settings = eval_settings(args, recipe)
    for spec in settings.shards:
        expand_shards(spec)  # FileNotFoundError naming the missing shard
    model, tokenizer = load_model(resolve_model(args.adapter, args.base, recipe))
    results = evaluate(model, Processor.from_model(model, tokenizer, **system_prompt(args, recipe)), settings)
    print_results(results)
    if settings.json_path:
        Path(settings.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(settings.json_path).write_text(json.dumps(results, indent=2) + "\n")
    return results


def main(argv: list[str]) -> int:
    """Entry point of `casa-adapter eval ARGS...`; returns the exit status (2: a usage or input error)."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        run(args)
    except (FileNotFoundError, AdapterError, ValueError) as e:
        print(f"casa-adapter eval: error: {e}", file=sys.stderr)
        return 2
    return 0
