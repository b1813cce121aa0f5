"""Random access to WebDataset samples: an index of each shard's members, and reads by sample.

A shard is a `.tar` file (WebDataset layout: members `KEY.EXT`, grouped by key in order) or a
folder of loose `KEY.EXT` files. Indexing reads only the tar headers (one seek a member), so a
sample can later be read on its own: this is what makes the loader's order a plain list of
sample indices, and resume exact (see `order.py`).

A truncated tar (the stream ends inside a member or before the end-of-archive blocks) keeps
its complete samples; its last sample is marked `truncated_tar` (it may miss members). A shard
that is not a tar at all becomes a single entry marked `truncated_tar`, so that the problem is
counted when the loader reaches it, like any bad sample.
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass, field

from casa_adapter.data.fetch import is_remote
from casa_adapter.data.sources import Source, expand_shards

_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
"""WebDataset's naming rule: the key runs to the first dot of the file name, the rest is the extension."""


@dataclass(frozen=True)
class SampleRef:
    """Where one sample's members are: its shard, key, and (ext, byte offset, size) per member."""

    shard: str
    key: str
    members: tuple[tuple[str, int, int], ...]
    problem: str | None = None
    """A reason from `counters.REASONS` known before reading (`truncated_tar`; for streamed shards
    also `missing_shard`, `shard_read_error`), else None."""

    detail: str = ""
    """What went wrong, for the log, when `problem` is set."""


def split_name(name: str) -> tuple[str, str] | None:
    """`dir/abc.0.jpg` -> (`dir/abc`, `0.jpg`); None for names without an extension."""
    match = _KEY_EXT.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


def _group(shard: str, entries: list[tuple[str, int, int]]) -> list[SampleRef]:
    """Group consecutive (name, offset, size) entries by key, as WebDataset does."""
    refs: list[SampleRef] = []
    key, members = None, []
    for name, offset, size in entries:
        parts = split_name(name)
        if parts is None:
            continue
        if parts[0] != key and members:
            refs.append(SampleRef(shard, key, tuple(members)))
            members = []
        key = parts[0]
        members.append((parts[1], offset, size))
    if members:
        refs.append(SampleRef(shard, key, tuple(members)))
    return refs


def index_tar(path: str) -> list[SampleRef]:
    """Index a tar shard from its headers; see the module docstring for truncated tars."""
    size = os.path.getsize(path)
    entries: list[tuple[str, int, int]] = []
    try:
        with tarfile.open(path, "r:") as tf:
            for info in tf:
                if info.isfile():
                    entries.append((info.name, info.offset_data, info.size))
            end = tf.offset
        truncated = not _has_end_marker(path, end)
    except (tarfile.TarError, EOFError, OSError):
        truncated = True
    while entries and entries[-1][1] + entries[-1][2] > size:
        entries.pop()
        truncated = True
    refs = _group(path, entries)
    if truncated:
        last = refs.pop() if refs else SampleRef(path, "", ())
        refs.append(SampleRef(path, last.key, last.members, "truncated_tar", "the shard ends inside this sample"))
    return refs


def _has_end_marker(path: str, offset: int) -> bool:
    """A complete tar ends with two zero blocks after its last member."""
    with open(path, "rb") as f:
        f.seek(offset)
        tail = f.read(1024)
    return len(tail) == 1024 and not tail.strip(b"\0")


def index_folder(path: str) -> list[SampleRef]:
    """Index a folder of loose `KEY.EXT` files (sorted by name, so keys group)."""
    names = sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))
    return _group(path, [(name, 0, -1) for name in names])


def index_shard(path: str) -> list[SampleRef]:
    return index_folder(path) if os.path.isdir(path) else index_tar(path)


@dataclass
class SourceIndex:
    """All samples of one source, in shard order, and how many each shard holds."""

    name: str
    refs: list[SampleRef]
    shard_sizes: list[int]

    @classmethod
    def build(cls, source: Source) -> SourceIndex:
        paths = expand_shards(source.shards)
        remote = [path for path in paths if is_remote(path)]
        if remote:
            raise ValueError(f"{remote[0]} is remote: an index reads local files (remote sources are streamed)")
        per_shard = [index_shard(path) for path in paths]
        refs = [ref for shard in per_shard for ref in shard]
        if not refs:
            raise ValueError(f"source {source.name!r} ({source.shards!r}) holds no sample")
        return cls(name=source.name or "", refs=refs, shard_sizes=[len(s) for s in per_shard])


@dataclass
class ShardReader:
    """Reads one sample's member bytes; keeps a few tar files open (reopened after a fork)."""

    max_open: int = 16
    _files: dict = field(default_factory=dict, repr=False)
    _pid: int = field(default=-1, repr=False)

    def read(self, ref: SampleRef) -> dict[str, bytes]:
        """{ext: bytes} for the sample's members (folder shards: the files `KEY.EXT`)."""
        if os.path.isdir(ref.shard):
            return {ext: _read_file(os.path.join(ref.shard, f"{ref.key}.{ext}")) for ext, _, _ in ref.members}
        return read_members(self._open(ref.shard), ref)

    def _open(self, path: str):
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        if path not in self._files:
            if len(self._files) >= self.max_open:
                self._files.pop(next(iter(self._files))).close()
            self._files[path] = open(path, "rb")  # noqa: SIM115 - kept open for later reads, closed on eviction
        return self._files[path]

    def __getstate__(self) -> dict:
        return {"max_open": self.max_open, "_files": {}, "_pid": -1}


def read_members(f, ref: SampleRef) -> dict[str, bytes]:
    """{ext: bytes} of a tar sample's members, read from the open tar file `f`."""
    out = {}
    for ext, offset, size in ref.members:
        f.seek(offset)
        out[ext] = f.read(size)
    return out


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
