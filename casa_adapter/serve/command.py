"""`casa-adapter serve SRC`: serve an adapter (or a saved folder, or a .ckpt) over HTTP.

    casa-adapter serve runs/demo/adapter/step-000200 --port 8000
    curl localhost:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}]}'

Endpoints, limits and clients: docs/serving.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from casa_adapter.serve.settings import ServeSettings

_LIMITS = {
    "max_sessions": "sessions held at once: video sessions + chat requests in flight (429 beyond)",
    "max_images": "images in one chat request (400 beyond)",
    "max_image_bytes": "bytes of one encoded image (413 beyond)",
    "max_image_pixels": "pixels of one decoded image (413 beyond)",
    "default_max_tokens": "tokens generated when a request names no max_tokens",
    "max_tokens": "most tokens one request may ask for (400 beyond)",
    "max_cache_tokens": "per-session KV-cache bound in positions (0: unbounded)",
    "session_idle_s": "seconds after which an untouched video session is closed",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="casa-adapter serve", description=__doc__.split("\n")[0].split(": ", 1)[1])
    parser.add_argument("source", help="an adapter directory, a save_pretrained folder, or a .ckpt")
    parser.add_argument("--base", help="base model replacing the one the adapter records (name or folder)")
    parser.add_argument("--tokenizer", help="a tokenizer folder, when the source holds none")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="load the model in this dtype")
    parser.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", help="the model name the API reports (default: the source path)")
    defaults = ServeSettings()
    for name, help_text in _LIMITS.items():
        kind = float if name == "session_idle_s" else int
        value = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=value, help=f"{help_text} ({value})")
    parser.add_argument(
        "--evict", default=defaults.evict, choices=["window", "error"], help="past max_cache_tokens: drop old windows"
    )
    parser.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs (off)")
    parser.add_argument("--log-level", default="warning")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not Path(args.source).exists():
        print(f"casa-adapter serve: {args.source}: no such adapter directory, folder or .ckpt", file=sys.stderr)
        return 2
    from casa_adapter.serve.server import serve
    from casa_adapter.serve.worker import ModelSource

    limits = {name: getattr(args, name) for name in _LIMITS}
    limits["max_cache_tokens"] = limits["max_cache_tokens"] or None
    try:
        settings = ServeSettings(**limits, evict=args.evict, allow_remote_images=args.allow_remote_images)
    except ValueError as error:
        print(f"casa-adapter serve: {error}", file=sys.stderr)
        return 2
    source = ModelSource(args.source, args.base, args.tokenizer, args.dtype)
    print(f"casa-adapter serve: {args.source} on http://{args.host}:{args.port} (docs/serving.md)", flush=True)
    serve(source, settings, args.host, args.port, args.accelerator, args.name, args.log_level)
    return 0


__all__ = ["build_parser", "main"]
