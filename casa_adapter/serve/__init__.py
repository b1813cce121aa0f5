"""`casa-adapter serve`: an OpenAI-compatible chat endpoint and video sessions over HTTP, on LitServe.

- `settings.ServeSettings`: the server's limits and defaults.
- `requests`, `images`: bodies checked and images decoded in the HTTP process (`ServeError` with a 4xx).
- `engine.ServeEngine`: every conversation in one `StreamBatch`, one forward per step for all of them
  (`jobs`: requests in progress and their replies; `feeding`: prompts queued within the position/cache budget).
- `worker`: the LitServe `LitAPI` and continuous-batching loop that drive the engine; `ModelSource`.
- `spec`, `responses`: the HTTP endpoints and their OpenAI-shaped JSON / server-sent events.
- `server`: `build_server`, `serve`; `command`: the console command.

See docs/serving.md.
"""

from casa_adapter.serve.engine import ServeEngine
from casa_adapter.serve.errors import ServeError
from casa_adapter.serve.settings import ServeSettings

__all__ = ["ServeEngine", "ServeError", "ServeSettings", "ModelSource", "build_server", "serve"]


def __getattr__(name: str):
    """The LitServe side (`ModelSource`, `build_server`, `serve`) is imported only when asked for."""
    if name == "ModelSource":
        from casa_adapter.serve.worker import ModelSource

        return ModelSource
    if name in ("build_server", "serve"):
        from casa_adapter.serve import server

        return getattr(server, name)
    raise AttributeError(f"module 'casa_adapter.serve' has no attribute {name!r}")
