"""`ShardPrefetcher`: a background thread that downloads a slot's next remote shards, in order.

The reader (a `streaming.StreamCursor`) takes the fetched shards one by one with `next()` and
gives each back with `release()` once it has read it, which deletes the file. Downloads wait for
room: at most `prefetch_shards + 1` shard files exist at once (the one being read, the ones
ready, the one downloading). The folder is private to the prefetcher and removed by `close()`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Iterable
from typing import Any

from casa_adapter.data.fetch import Fetched, StreamSettings, fetch_shard

_POLL = 0.1
"""Seconds between checks of the stop flag while waiting for room."""


class ShardPrefetcher:
    """Fetches `(tag, shard name)` items of `plan` ahead of the reader; see the module docstring."""

    def __init__(self, plan: Iterable[tuple[Any, str]], settings: StreamSettings) -> None:
        self.settings = settings
        self.folder = tempfile.mkdtemp(prefix="casa-shards-", dir=settings.cache_dir)
        self._room = threading.Semaphore(settings.prefetch_shards + 1)
        self._ready: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iter(plan),), daemon=True, name="casa-prefetch")
        self._thread.start()

    def _run(self, plan) -> None:
        try:
            for n, (tag, name) in enumerate(plan):
                while not self._room.acquire(timeout=_POLL):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                path = os.path.join(self.folder, f"{n:06d}.tar")
                self._ready.put((tag, fetch_shard(name, path, self.settings, self._stop)))
            self._ready.put(None)
        except BaseException as e:  # handed to the reader, which raises it
            self._ready.put(e)

    def next(self) -> tuple[Any, Fetched] | None:
        """The next fetched shard with its tag (waits for it); None once the plan is done."""
        item = self._ready.get()
        if isinstance(item, BaseException):
            raise RuntimeError(f"prefetching shards into {self.folder} failed: {item}") from item
        return item

    def release(self, fetched: Fetched) -> None:
        """The reader is done with this shard: delete its file, make room for the next download."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(fetched.path)
        self._room.release()

    def close(self) -> None:
        """Stop downloading and remove the cache folder."""
        self._stop.set()
        self._thread.join(timeout=5)
        shutil.rmtree(self.folder, ignore_errors=True)
