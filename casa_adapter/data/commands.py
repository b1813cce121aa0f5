"""`casa-adapter data ...`: check shards, convert LLaVA json / image folders, make the demo set.

casa-adapter data check SHARDS... [--json PATH] [--tokenizer DIR --max-tokens N --image-tokens N]
                        [--retries N --prefetch-shards N --cache-dir DIR]   (remote shards)
casa-adapter data bench [--shards DIR] [--samples N]   (samples/s: local files vs HTTP on 127.0.0.1)
casa-adapter data convert llava --json FILE --images DIR --out DIR [--maxcount N]
casa-adapter data convert folder --images DIR --out DIR [--prompt TEXT] [--maxcount N]
casa-adapter data make-demo --out DIR [--seed S --train N --val N --image-size PX --qtypes a,b]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from casa_adapter.data.demo_tasks import TASKS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="casa-adapter data", description="Data tools (docs/data.md).")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="count good and bad samples by reason")
    check.add_argument("shards", nargs="+", help="shard paths, brace patterns, globs, folders, URLs, pipe:CMD")
    check.add_argument("--json", dest="json_path", help="also write the report as json here")
    check.add_argument("--tokenizer", help="local tokenizer folder: also check tokens and the length budget")
    check.add_argument("--max-tokens", type=int, default=1024, help="budget: text + image tokens (with --tokenizer)")
    check.add_argument("--image-tokens", type=int, default=64, help="tokens one image costs (with --tokenizer)")
    check.add_argument("--overlength", choices=("truncate", "drop"), default="truncate")
    check.add_argument("--fail-above", type=float, help="exit 1 when the bad fraction is above this")

    bench = sub.add_parser("bench", help="samples/s reading shards: local files vs streamed over loopback HTTP")
    bench.add_argument("--shards", help="a folder of .tar shards (default: a generated demo set)")
    bench.add_argument("--samples", type=int, default=4000, help="demo samples to generate without --shards")
    for p in (check, bench):
        p.add_argument("--retries", type=int, default=3, help="reopen a broken remote shard stream this often")
        p.add_argument("--prefetch-shards", type=int, default=2, help="remote shards downloaded ahead")
        p.add_argument("--cache-dir", help="folder for downloaded shards (default: the temporary folder)")

    convert = sub.add_parser("convert", help="convert a dataset to WebDataset shards")
    kinds = convert.add_subparsers(dest="kind", required=True)
    llava = kinds.add_parser("llava", help="LLaVA-Instruct json (+ image folder), multi-image entries included")
    llava.add_argument("--json", dest="json_path", required=True, help="the LLaVA json (or .jsonl)")
    llava.add_argument("--images", required=True, help="folder the entries' `image` paths are relative to")
    folder = kinds.add_parser("folder", help="image + caption pairs: x.jpg + x.txt")
    folder.add_argument("--images", required=True, help="folder of images with .txt captions (recursive)")
    folder.add_argument("--prompt", default="Describe the image.", help="the user turn before each caption")
    for p in (llava, folder):
        p.add_argument("--out", required=True, help="output folder for shard-000000.tar, ...")
        p.add_argument("--maxcount", type=int, default=1000, help="samples per shard")

    demo = sub.add_parser("make-demo", help="generate the embedded demo dataset (shapes, colours, counts, text)")
    demo.add_argument("--out", required=True, help="output folder (train/, val/, meta.json)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--train", type=int, default=20000, help="training samples")
    demo.add_argument("--val", type=int, default=1000, help="validation samples")
    demo.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    demo.add_argument("--qtypes", default=",".join(TASKS), help=f"comma-separated subset of: {', '.join(TASKS)}")
    demo.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    for p in (check, bench, llava, folder, demo):
        p.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _check(args: argparse.Namespace) -> int:
    from casa_adapter.data.check import check_shards, format_report, to_tensor
    from casa_adapter.data.decode import DecodeSettings

    settings = DecodeSettings(image_tokens=args.image_tokens, max_tokens=args.max_tokens, overlength=args.overlength)
    processor = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        from casa_adapter.processor import Processor

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        processor = Processor(tokenizer, image_token_id=len(tokenizer), image_transform=to_tensor)
    report = check_shards(args.shards, settings, processor, not args.quiet, _stream_settings(args))
    print(format_report(report))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(report.as_dict(), f, indent=2)
    too_bad = args.fail_above is not None and report.counter.bad_fraction > args.fail_above
    return 1 if too_bad else 0


def _stream_settings(args: argparse.Namespace):
    from casa_adapter.data.fetch import StreamSettings

    return StreamSettings(retries=args.retries, prefetch_shards=args.prefetch_shards, cache_dir=args.cache_dir)


def _bench(args: argparse.Namespace) -> int:
    from casa_adapter.data.bench import run_bench

    print(run_bench(args.shards, args.samples, _stream_settings(args), progress=not args.quiet))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from casa_adapter.data.convert import convert_folder, convert_llava

    if args.kind == "llava":
        summary = convert_llava(args.json_path, args.images, args.out, args.maxcount, not args.quiet)
    else:
        summary = convert_folder(args.images, args.out, args.prompt, args.maxcount, not args.quiet)
    print(" ".join(f"{k}: {v}" for k, v in sorted(summary.items())))
    return 0


def _make_demo(args: argparse.Namespace) -> int:
    from casa_adapter.data.make_demo import DemoSettings, make_demo

    qtypes = tuple(q.strip() for q in args.qtypes.split(",") if q.strip())
    settings = DemoSettings(
        out=args.out,
        seed=args.seed,
        train=args.train,
        val=args.val,
        image_size=args.image_size,
        qtypes=qtypes,
        maxcount=args.maxcount,
    )
    meta = make_demo(settings, show_progress=not args.quiet)
    print(
        f"wrote {args.train} train + {args.val} val samples to {args.out} (chance {meta['chance']:.1%}; "
        f"text-only baseline on val: {meta['text_only_val_accuracy']})"
    )
    return 0


def main(argv: list[str]) -> int:
    """Entry point of `casa-adapter data ARGS...`; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        commands = {"check": _check, "bench": _bench, "convert": _convert, "make-demo": _make_demo}
        return commands[args.command](args)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"casa-adapter data {args.command}: error: {e}", file=sys.stderr)
        return 2
