"""Writing WebDataset shards (used by the converters and `make-demo`).

Shards are `OUT/shard-000000.tar, ...` of at most `maxcount` samples, written with
WebDataset's `ShardWriter` with a fixed mtime, so the same samples give byte-identical shards.
"""

from __future__ import annotations

import os
import re

import webdataset as wds

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def safe_key(text: str) -> str:
    """A WebDataset key from any id: no dots (the key ends at the first dot), no slashes."""
    return _UNSAFE.sub("_", text) or "_"


class ShardSink:
    """Write samples `{ext: bytes}` under keys into numbered tar shards; a context manager."""

    def __init__(self, out_dir: str, maxcount: int = 1000, prefix: str = "shard") -> None:
        if maxcount < 1:
            raise ValueError(f"maxcount must be >= 1, got {maxcount}")
        os.makedirs(out_dir, exist_ok=True)
        pattern = os.path.join(out_dir, f"{prefix}-%06d.tar")
        self._writer = wds.ShardWriter(pattern, maxcount=maxcount, verbose=0, encoder=False, mtime=0.0)
        self.shards = 0
        """Shard files written (set on `close`)."""

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if key != safe_key(key):
            raise ValueError(f"unsafe WebDataset key {key!r}; use safe_key()")
        self._writer.write({"__key__": key, **members})

    def close(self) -> None:
        self.shards = self._writer.shard
        self._writer.close()

    def __enter__(self) -> ShardSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
