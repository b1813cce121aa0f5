"""A shard folder served on 127.0.0.1 that can fail on purpose: 404s, connections dropped mid-body, delays."""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from casa_adapter.data.serve import ShardHandler, serve_folder


@dataclass
class Faults:
    """What the server does wrong, and what it was asked (file name -> GET requests)."""

    missing: set[str] = field(default_factory=set)
    """Names answered with 404."""

    drops: dict[str, int] = field(default_factory=dict)
    """Name -> how many more GETs send the full Content-Length, half the body, then close."""

    delay: float = 0.0
    """Seconds before each answer."""

    requests: Counter = field(default_factory=Counter)


@contextlib.contextmanager
def faulty_server(folder: str, faults: Faults) -> Iterator[str]:
    """`serve_folder(folder)` with `faults` applied; yields the base URL."""

    class FaultyHandler(ShardHandler):
        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            faults.requests[name] += 1
            time.sleep(faults.delay)
            if name in faults.missing:
                self.send_error(404, "no such shard")
            elif faults.drops.get(name, 0) > 0:
                faults.drops[name] -= 1
                with open(os.path.join(folder, name), "rb") as f:
                    data = f.read()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                time.sleep(0.05)  # the half arrives as data before the connection goes
                self.close_connection = True
            else:
                super().do_GET()

    with serve_folder(folder, FaultyHandler) as url:
        yield url
