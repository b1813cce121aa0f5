"""Atomic writes: a crash or a `kill -9` mid-write leaves the old file (or folder) whole, never half a new one.

- `atomic_file(path)`: write into a temporary file beside `path`, flush, fsync, then `os.replace`;
- `atomic_dir(path)`: fill a temporary folder beside `path`, fsync its files, then swap it in.

Used by adapter saving, Lightning's resume checkpoints (`training.callbacks.AtomicCheckpointIO`),
the evaluation's predictions file and the study's summaries.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_file(target, "w") as f:
    ...     _ = f.write("done")
    >>> target.read_text()
    'done'
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """Yields an open file; on a clean exit it replaces `path` in one rename. On an error `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty temporary folder beside `path`; on a clean exit its files are fsynced and it takes
    `path`'s place (an existing `path` is moved aside first and removed after). On an error `path` is untouched."""
    target = Path(path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
    try:
        yield tmp
        for f in (p for p in tmp.rglob("*") if p.is_file()):
            os.chmod(f, 0o666 & ~_umask())
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _swap_in(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, target: Path) -> None:
    """Replace `target` by `tmp` so that a crash leaves either the old or the new folder whole (the old one
    moved aside under a `.NAME.old-*` sibling for the instant between the two renames)."""
    if not target.exists():
        os.replace(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = ["atomic_dir", "atomic_file"]
