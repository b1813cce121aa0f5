"""`ServerProcess`: `casa-adapter serve` started in a child process, waited for, and stopped (tests, benchmarks).

with ServerProcess("runs/demo/adapter/step-000200", ["--max-sessions", "32"]) as server:
    httpx.post(server.url + "/v1/chat/completions", json=...)
    server.rss_bytes()    # resident memory of the server and its model worker
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server for `source` on a free local port; `flags` are more `casa-adapter serve` flags, `env` more
    environment variables of the server process."""

    def __init__(self, source, flags: list[str] | None = None, env: dict | None = None, start_timeout_s: float = 180):
        self.source, self.flags, self.start_timeout_s = str(source), list(flags or []), start_timeout_s
        self.env = {**os.environ, **(env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        command = [sys.executable, "-m", "casa_adapter.cli", "serve", self.source, "--port", str(self.port)]
        self.process = subprocess.Popen([*command, *self.flags], env=self.env, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"casa-adapter serve {self.source} exited with {self.process.returncode} while starting"
                )
            if self._healthy():
                return self
            time.sleep(0.5)
        self.__exit__()
        raise TimeoutError(f"casa-adapter serve {self.source} was not healthy after {self.start_timeout_s:.0f} s")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def rss_bytes(self) -> int:
        """Resident memory of the server process and all its children (the model worker among them)."""
        root = psutil.Process(self.process.pid)
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


__all__ = ["ServerProcess", "free_port"]
