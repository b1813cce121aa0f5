"""`ServeSettings`: the limits and defaults of `casa-adapter serve`."""

from __future__ import annotations

from dataclasses import dataclass

from casa_adapter.fusion.stream.limits import Evict, StreamLimits


@dataclass
class ServeSettings:
    """What the server accepts and keeps. Every limit is answered with a clear 4xx, never a crash."""

    max_sessions: int = 64
    """Sessions held at once: open video sessions plus chat requests in flight (429 beyond)."""
    max_images: int = 8
    """Images in one chat request (400 beyond)."""
    max_image_bytes: int = 10 * 2**20
    """Bytes of one encoded image (413 beyond)."""
    max_image_pixels: int = 4096 * 4096
    """Pixels (width x height) of one decoded image (413 beyond)."""
    default_max_tokens: int = 64
    """Tokens generated when a request names no `max_tokens`."""
    max_tokens: int = 1024
    """Most tokens one request may ask for (400 beyond)."""
    max_cache_tokens: int | None = 8192
    """Per-session KV-cache bound (`StreamLimits.max_cache_tokens`); None = unbounded."""
    evict: Evict = "window"
    """What a session past `max_cache_tokens` does (`StreamLimits.evict`): drop its oldest windows, or refuse."""
    session_idle_s: float = 600.0
    """A video session untouched this long is closed (its next call gets 404)."""
    allow_remote_images: bool = False
    """Fetch `http(s)://` image URLs (off: only `data:` URIs; remote URLs get 400)."""
    remote_timeout_s: float = 10.0
    """Timeout of one remote image fetch."""

    @property
    def max_body_bytes(self) -> int:
        """The largest request body taken (413 beyond): max_images base64-encoded images plus 1 MiB of text."""
        return self.max_images * self.max_image_bytes * 4 // 3 + 2**20

    def __post_init__(self):
        for name in ("max_sessions", "max_images", "max_image_bytes", "max_image_pixels", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServeSettings.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.default_max_tokens <= self.max_tokens:
            raise ValueError("ServeSettings.default_max_tokens must be between 0 and max_tokens")
        StreamLimits(self.max_cache_tokens, self.evict)  # validates both


__all__ = ["ServeSettings"]
