"""Reading remote shards: `http(s)://`, `s3://`, `gs://` (through fsspec) and `pipe:CMD`, with retries.

A remote shard is read as one byte stream into a local file (`fetch_shard`). A stream that
breaks (a dropped connection, a server error, a pipe command that fails) is reopened up to
`StreamSettings.retries` times, waiting `retry_backoff` seconds, then twice that, and so on;
the reopened stream continues at the byte where the last one stopped (s3 / gs seek there;
HTTP and pipes skip that many bytes). A shard that does not exist (HTTP 404, no such object) is not
retried. What a fetch ends with is a `Fetched`: the local file, its size, and the problem if
any (`missing_shard`, or `shard_read_error` once the retries ran out), which `streaming.py`
turns into counted bad samples.

s3 and gs need `s3fs` / `gcsfs` (`pip install 'casa-adapter[remote]'`); credentials and
endpoints come from their usual places (environment, config files) or `storage_options`.
"""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "gcs://", "pipe:")
"""Shard names read as streams; anything else is a local path (indexed, random access)."""

_HTTP = ("fsspec", "aiohttp")
_BACKENDS = {"http": _HTTP, "https": _HTTP, "s3": ("s3fs",), "gs": ("gcsfs",), "gcs": ("gcsfs",)}
"""The packages each URL scheme needs (`pip install 'casa-adapter[remote]'`)."""

_CHUNK = 1 << 20


def is_remote(name: str) -> bool:
    """True for the shard names `fetch_shard` reads (URLs and `pipe:CMD`), False for local paths."""
    return name.startswith(REMOTE_PREFIXES)


def require_backends(names: list[str]) -> None:
    """Raise ImportError, naming the packages and the extra, when a shard's URL scheme cannot be read here."""
    schemes = {name.split("://")[0]: name for name in names if "://" in name}  # pipe: needs nothing
    for scheme, name in schemes.items():
        missing = [package for package in _BACKENDS.get(scheme, ()) if importlib.util.find_spec(package) is None]
        if missing:
            raise ImportError(f"reading {name} needs {', '.join(missing)}: pip install 'casa-adapter[remote]'")


@dataclass
class StreamSettings:
    """How remote shards are fetched: retries, prefetch and the local cache."""

    retries: int = 3
    """Times a broken shard stream is reopened (continuing where it stopped) before the rest of the
    shard is counted as one bad sample `shard_read_error`."""

    retry_backoff: float = 1.0
    """Seconds before the first retry; each further retry waits twice as long as the one before."""

    prefetch_shards: int = 2
    """Shards a slot downloads ahead of the one it reads (>= 1). Each slot keeps at most
    `prefetch_shards + 1` shard files in its cache folder; a shard's file goes once it is read."""

    cache_dir: str | None = None
    """Folder for the slots' cache folders (each `casa-shards-*`, removed when its slot stops).
    None: the system's temporary folder."""

    storage_options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for `fsspec.open` (e.g. `{anon: true}` or `{endpoint_url: ...}` for s3)."""

    def __post_init__(self) -> None:
        if self.retries < 0 or self.retry_backoff < 0 or self.prefetch_shards < 1:
            raise ValueError(f"retries and retry_backoff must be >= 0 and prefetch_shards >= 1: {self}")


@dataclass(frozen=True)
class Fetched:
    """A shard read into a local file: what was asked, where it is, how many bytes, what went wrong."""

    name: str
    path: str
    size: int
    problem: str | None = None
    """None, `missing_shard` (nothing to read) or `shard_read_error` (the file holds what came before)."""

    detail: str = ""


@contextmanager
def open_stream(name: str, offset: int, storage_options: dict[str, Any]) -> Iterator[IO[bytes]]:
    """A binary stream of a remote shard from byte `offset` on; FileNotFoundError when it does not exist."""
    if name.startswith("pipe:"):
        with _pipe(name[len("pipe:") :]) as stream:
            _skip(stream, offset)
            yield stream
        return
    import fsspec

    http = name.startswith("http")
    # http(s): one plain GET streamed (block_size=0), so servers without range requests work too
    options = {"block_size": 0, **storage_options} if http else storage_options
    with fsspec.open(name, "rb", **options) as stream:
        if http:  # a streamed HTTP file says it is seekable but only seeks to where it is
            _skip(stream, offset)
        else:
            stream.seek(offset)
        yield stream


def _skip(stream: IO[bytes], n: int) -> None:
    while n > 0:
        chunk = stream.read(min(n, _CHUNK))
        if not chunk:
            raise OSError(f"the stream ended after {n} bytes fewer than were read before")
        n -= len(chunk)


@contextmanager
def _pipe(command: str) -> Iterator[IO[bytes]]:
    """The standard output of a shell command; a non-zero exit status raises OSError with its stderr."""
    with tempfile.TemporaryFile() as err:
        # the user's own `pipe:` command, run by the shell as WebDataset's pipe: shards are
        proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=err)
        try:
            yield proc.stdout
        finally:
            proc.stdout.close()
            status = proc.wait()
        if status != 0:
            err.seek(0)
            message = err.read()[-2000:].decode("utf-8", "replace").strip()
            raise OSError(f"pipe command {shlex.quote(command)} exited with status {status}: {message}")


def fetch_shard(name: str, path: str, settings: StreamSettings, stop: threading.Event) -> Fetched:
    """Read the shard `name` into the file `path`, retrying a broken stream; see the module docstring.

    `stop` (set by the prefetcher when its slot ends) interrupts the download and the waits.
    """
    size, attempt, errors = 0, 0, []
    with open(path, "wb") as out:
        while not stop.is_set():
            try:
                with open_stream(name, size, settings.storage_options) as stream:
                    while chunk := stream.read(_CHUNK):
                        out.write(chunk)
                        size += len(chunk)
                        if stop.is_set():  # the slot has ended: the prefetcher drops what this returns
                            break
                return Fetched(name, path, size)
            except FileNotFoundError as e:
                if size == 0:
                    return Fetched(name, path, 0, "missing_shard", f"{type(e).__name__}: {e}")
                errors.append(f"{type(e).__name__}: {e}")  # it went away mid-read: a read error
            except Exception as e:  # each backend has its own errors (aiohttp, botocore, OSError...)
                errors.append(f"{type(e).__name__}: {e}")
            if attempt == settings.retries:
                break
            stop.wait(settings.retry_backoff * 2**attempt)
            attempt += 1
    tries = f"{attempt + 1} {'try' if attempt == 0 else 'tries'}"
    detail = f"the stream broke after {size} bytes ({tries}; last error: {errors[-1] if errors else 'stopped'})"
    return Fetched(name, path, size, "shard_read_error", detail)
