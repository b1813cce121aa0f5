"""Where samples come from: shard specs (lists, brace patterns, globs, folders) and weighted sources.

A shard spec is a path, a brace pattern (`data/shard-{000000..000009}.tar`), a glob
(`data/*.tar`), several of these joined by `::`, or a list of them. A folder stands for the
`.tar` files directly inside it, or, when it holds none, for itself read as one "loose"
shard of `KEY.json` / `KEY.jpg` files (an unpacked WebDataset).

Remote shards (`http(s)://`, `s3://`, `gs://`, `pipe:CMD`; see `fetch.py`) take brace patterns
and lists too, but no globs (a `?` belongs to a URL) and no existence check here: a shard that
is not there is counted as `missing_shard` when the loader reaches it. A source whose shards are
remote is streamed (`streaming.py`); local sources keep the index and random access.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Any

import braceexpand

from casa_adapter.data.fetch import is_remote

ShardSpec = str | list[str]


@dataclass
class Source:
    """One dataset in a mixture."""

    shards: ShardSpec
    """Shard spec: paths, brace patterns, globs, folders, URLs, `pipe:CMD` (see the module docstring)."""

    weight: float = 1.0
    """Relative sampling weight in the training mixture (normalised over the sources)."""

    name: str | None = None
    """Name used in counts and logs; defaults to the first expanded shard's folder name."""

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ValueError(f"Source weight must be > 0, got {self.weight} for {self.shards!r}")


def expand_shards(spec: ShardSpec) -> list[str]:
    """Expand a shard spec into the list of shard paths (tar files or loose-file folders)."""
    parts = [spec] if isinstance(spec, str) else list(spec)
    paths: list[str] = []
    for part in parts:
        for piece in str(part).split("::"):
            if is_remote(piece):
                paths.extend(braceexpand.braceexpand(piece))
                continue
            for pattern in braceexpand.braceexpand(os.path.expanduser(piece)):
                paths.extend(_expand_one(pattern))
    if not paths:
        raise FileNotFoundError(f"shard spec {spec!r} matches no shard")
    return paths


def _expand_one(pattern: str) -> list[str]:
    if any(ch in pattern for ch in "*?["):
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise FileNotFoundError(f"shard glob {pattern!r} matches no file")
        return [p for m in matches for p in _expand_one(m)]
    if os.path.isdir(pattern):
        tars = sorted(os.path.join(pattern, n) for n in os.listdir(pattern) if n.endswith(".tar"))
        return tars or [pattern]
    if not os.path.exists(pattern):
        raise FileNotFoundError(f"shard {pattern!r} does not exist")
    return [pattern]


def as_sources(spec: Any) -> list[Source]:
    """Normalise what a user or a recipe gives into a list of named `Source`s.

    Accepts a shard spec string, a list of shard specs (one source each), a `Source`, dicts
    `{shards, weight, name}`, or a list mixing these.
    """
    items = spec if isinstance(spec, list) else [spec]
    sources = [_as_source(item) for item in items]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be unique, got {names}; give each source a `name`")
    return sources


def _as_source(item: Any) -> Source:
    if isinstance(item, Source):
        source = item
    elif isinstance(item, dict):
        source = Source(**item)
    elif isinstance(item, str):
        source = Source(shards=item)
    else:
        raise TypeError(f"cannot read a data source from {item!r}")
    if source.name is None:
        source.name = _default_name(expand_shards(source.shards)[0])
    return source


def _default_name(first: str) -> str:
    """The folder of the first shard: `data/llava/shard-0.tar` and `s3://b/llava/shard-0.tar` -> `llava`."""
    if first.startswith("pipe:"):
        return "pipe"
    if is_remote(first):
        return first.split("?")[0].rstrip("/").split("/")[-2]
    folder = first if os.path.isdir(first) else os.path.dirname(first)
    return os.path.basename(os.path.abspath(folder))
