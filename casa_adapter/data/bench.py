"""`casa-adapter data bench`: samples/s reading the same shards from local files and over HTTP.

Both sides run what `data check` runs on every sample (read, json, chat, full image decode;
no tokenizer), one after the other in one process: local files through the tar index, then the
same folder served on 127.0.0.1 (`serve.py`) and streamed (fetch, prefetch, cache, index).
Without `--shards`, a demo set (`make-demo`, 64 px PNGs) is generated in a temporary folder.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

from casa_adapter.data.check import check_shards
from casa_adapter.data.decode import DecodeSettings
from casa_adapter.data.fetch import StreamSettings
from casa_adapter.data.make_demo import DemoSettings, make_demo
from casa_adapter.data.serve import serve_folder


@dataclass
class BenchResult:
    """One side of the benchmark."""

    reader: str
    samples: int
    seconds: float
    megabytes: float

    def line(self) -> str:
        rate, mb_rate = self.samples / self.seconds, self.megabytes / self.seconds
        return f"{self.reader:<25}{self.samples:>9}{self.seconds:>9.2f}{rate:>12.0f}{mb_rate:>9.1f}"


def _timed(reader: str, specs: list[str], megabytes: float, stream: StreamSettings, progress: bool) -> BenchResult:
    start = time.perf_counter()
    report = check_shards(specs, DecodeSettings(image_tokens=1), show_progress=progress, stream=stream)
    seconds = time.perf_counter() - start
    if report.counter.n_bad:
        raise ValueError(f"{reader}: {report.counter.n_bad} bad samples {dict(report.counter.bad)}; bench good shards")
    return BenchResult(reader, report.counter.good, seconds, megabytes)


def bench_folder(folder: str, stream: StreamSettings, progress: bool = False) -> list[BenchResult]:
    """Read every `.tar` of `folder` locally, then over loopback HTTP; one result each."""
    names = sorted(n for n in os.listdir(folder) if n.endswith(".tar"))
    if not names:
        raise FileNotFoundError(f"no .tar shard in {folder}")
    megabytes = sum(os.path.getsize(os.path.join(folder, n)) for n in names) / 1e6
    local = _timed("local files (indexed)", [os.path.join(folder, n) for n in names], megabytes, stream, progress)
    with serve_folder(folder) as url:
        remote = _timed("http 127.0.0.1 (stream)", [f"{url}/{n}" for n in names], megabytes, stream, progress)
    return [local, remote]


def run_bench(shards: str | None, samples: int, stream: StreamSettings, progress: bool = False) -> str:
    """The benchmark's table (generating a demo set of `samples` when `shards` is None)."""
    with tempfile.TemporaryDirectory(prefix="casa-bench-") as tmp:
        if shards is None:
            shards = os.path.join(tmp, "train")
            make_demo(DemoSettings(out=tmp, train=samples, val=1), show_progress=progress)
        results = bench_folder(shards, stream, progress)
    lines = [f"{'reader':<25}{'samples':>9}{'seconds':>9}{'samples/s':>12}{'MB/s':>9}"]
    return "\n".join(lines + [result.line() for result in results])
