"""`build_server`: a LitServe server for one wrapped model; `serve` runs it (what `casa-adapter serve` calls).

    from casa_adapter.serve import ModelSource, ServeSettings, serve
    serve(ModelSource("runs/demo/adapter/step-000200"), ServeSettings(max_sessions=32), port=8000)

The model runs in LitServe's inference worker process (one, on one device); the HTTP server decodes and
checks requests. See docs/serving.md.
"""

from __future__ import annotations

import litserve as ls

from casa_adapter.serve.settings import ServeSettings
from casa_adapter.serve.worker import CasaServeAPI, ModelSource


def build_server(
    source: ModelSource, settings: ServeSettings | None = None, accelerator: str = "auto", model_name: str | None = None
) -> ls.LitServer:
    """The server, not started: `server.run(host=..., port=...)`, or LitServe's test helpers."""
    settings = settings or ServeSettings()
    api = CasaServeAPI(source, settings, model_name)
    return ls.LitServer(
        api, accelerator=accelerator, devices=1, timeout=False, max_payload_size=settings.max_body_bytes
    )


def serve(
    source: ModelSource,
    settings: ServeSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    accelerator: str = "auto",
    model_name: str | None = None,
    log_level: str = "warning",
) -> None:
    """Build the server and run it until interrupted."""
    server = build_server(source, settings, accelerator, model_name)
    server.run(host=host, port=port, num_api_servers=1, log_level=log_level, generate_client_file=False)


__all__ = ["build_server", "serve"]
