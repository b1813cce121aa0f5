"""Images in requests: `data:` URIs (and `http(s)://` URLs when allowed) -> RGB arrays, within the limits.

Decoding happens in the HTTP process, so bad images are answered there (400/413) and only decoded
pixels (H, W, 3) uint8 arrays travel to the model's worker.
"""

from __future__ import annotations

import base64
import binascii
import io
import urllib.request
import warnings

import numpy as np
from PIL import Image

from casa_adapter.serve.errors import ServeError
from casa_adapter.serve.settings import ServeSettings


def decode_image_url(url: str, settings: ServeSettings, where: str = "image") -> np.ndarray:
    """An OpenAI `image_url.url` -> (H, W, 3) uint8 array. `where` names the image in error messages."""
    if not isinstance(url, str) or not url:
        raise ServeError(400, f"{where}: image_url.url must be a non-empty string")
    if url.startswith("data:"):
        return decode_image_bytes(_data_uri_bytes(url, settings, where), settings, where)
    if url.startswith(("http://", "https://")):
        if not settings.allow_remote_images:
            raise ServeError(400, f"{where}: remote image URLs are refused by this server; send a data: URI")
        return decode_image_bytes(_fetch(url, settings, where), settings, where)
    raise ServeError(400, f"{where}: image_url.url must be a data: URI (data:image/png;base64,...)")


def _data_uri_bytes(url: str, settings: ServeSettings, where: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ServeError(400, f"{where}: a data: URI must be data:<type>;base64,<data>")
    if len(payload) * 3 // 4 > settings.max_image_bytes:
        raise ServeError(413, f"{where}: larger than max_image_bytes={settings.max_image_bytes}")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ServeError(400, f"{where}: corrupt base64 data ({e})") from e


def _fetch(url: str, settings: ServeSettings, where: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=settings.remote_timeout_s) as response:
            data = response.read(settings.max_image_bytes + 1)
    except OSError as e:
        raise ServeError(400, f"{where}: could not fetch {url}: {e}") from e
    if len(data) > settings.max_image_bytes:
        raise ServeError(413, f"{where}: larger than max_image_bytes={settings.max_image_bytes}")
    return data


def decode_image_bytes(data: bytes, settings: ServeSettings, where: str = "image") -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 array; 400 for what is not an image, 413 for too many pixels."""
    if len(data) > settings.max_image_bytes:
        raise ServeError(413, f"{where}: larger than max_image_bytes={settings.max_image_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > settings.max_image_pixels:
                raise ServeError(
                    413, f"{where}: {image.width}x{image.height} is over max_image_pixels={settings.max_image_pixels}"
                )
            return np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
    except ServeError:
        raise
    except Exception as e:  # PIL raises many kinds for bytes that are not an image
        raise ServeError(400, f"{where}: not a readable image ({type(e).__name__}: {e})") from e


def encode_data_uri(image, fmt: str = "PNG") -> str:
    """A PIL image or (H, W, 3) uint8 array -> a data: URI (for clients, tests and benchmarks)."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


__all__ = ["decode_image_url", "decode_image_bytes", "encode_data_uri"]
