"""A static HTTP server for a shard folder on 127.0.0.1: what `data bench` streams from (and the tests).

    with serve_folder("data/demo/train") as url:   # "http://127.0.0.1:PORT"
        shards = f"{url}/shard-{{000000..000019}}.tar"

The tests serve through a handler that fails on purpose (`tests/data/shard_server.py`).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class ShardHandler(SimpleHTTPRequestHandler):
    """Serves the folder's files (with Content-Length), without a log line per request."""

    def log_message(self, format: str, *args) -> None:
        return


@contextlib.contextmanager
def serve_folder(folder: str, handler: type[ShardHandler] = ShardHandler) -> Iterator[str]:
    """Serve `folder` on a free port of 127.0.0.1 in a thread; yields the base URL, stops on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=folder))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="casa-shard-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
