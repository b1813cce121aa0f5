"""Pretrained weights for vision towers: found locally, downloaded only when the hub answers.

`resolve_weights` turns `VisionSettings.pretrained` into a local checkpoint path: a file path as
given, an open_clip tag through the Hugging Face / open_clip cache, and a download only when the
hub is reachable (and not in offline mode). Otherwise it fails fast with `weights_error`, which
says what to pass instead. `load_into` loads the image-tower part of a checkpoint into a tower.
"""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace
from urllib.parse import urlparse

from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from safetensors import safe_open
from torch import Tensor, nn


def _open_clip():
    """The `open_clip` module, imported on first use: local towers (`siglip-tiny`) and local weight files
    need only timm and safetensors, so `import casa_adapter` works without open_clip_torch."""
    import open_clip

    return open_clip


def resolve_weights(name: str, model: str, pretrained: bool | str, cache_dir: str | None) -> tuple[str | None, dict]:
    """(local checkpoint path, or None for random init; the open_clip pretrained config whose
    preprocessing applies). `pretrained`: True = the model's first open_clip tag, a str = a tag
    or a file path, False = random (no network access)."""
    tags = _open_clip().list_pretrained_tags_by_model(model)
    default_cfg = _tag_cfg(model, tags[0] if tags else None)
    if isinstance(pretrained, str) and os.path.isfile(os.path.expanduser(pretrained)):
        return os.path.expanduser(pretrained), default_cfg
    if isinstance(pretrained, str) and pretrained not in tags:
        raise ValueError(
            f"pretrained={pretrained!r} is neither an existing file nor an open_clip tag of {model!r} (tags: {tags})"
        )
    if pretrained is False:
        return None, default_cfg
    if not tags:
        raise RuntimeError(
            f"open_clip has no pretrained weights for {model!r} (vision={name!r}); pass "
            'VisionSettings(pretrained="/path/to/open_clip_model.safetensors") or pretrained=False'
        )
    tag = pretrained if isinstance(pretrained, str) else tags[0]
    cfg = _tag_cfg(model, tag)
    return _fetch(name, model, tag, cfg, cache_dir), cfg


def _tag_cfg(model: str, tag: str | None) -> dict:
    return dict(_open_clip().get_pretrained_cfg(model, tag)) if tag else {}


def _fetch(name: str, model: str, tag: str, cfg: dict, cache_dir: str | None) -> str:
    """The cached checkpoint for `cfg`; downloaded only when the hub is quickly reachable."""
    hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    cached = cfg.get("file") or (_cached_hub_file(hub, cache_dir) if hub else _cached_url_file(url, cache_dir))
    if cached:
        return cached
    if _offline():
        raise weights_error(name, model, tag, "offline mode: HF_HUB_OFFLINE is set")
    endpoint = (os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT) if hub else url
    if not _reachable(endpoint):
        raise weights_error(name, model, tag, f"{urlparse(endpoint).netloc or endpoint} is unreachable")
    try:
        return _open_clip().pretrained.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as err:  # any download failure becomes the one actionable error
        raise weights_error(name, model, tag, f"{type(err).__name__}: {err}") from err


def weights_error(name: str, model: str, tag: str, reason: str) -> RuntimeError:
    """The error raised when pretrained weights are neither cached nor downloadable."""
    return RuntimeError(
        f"Pretrained weights for open_clip model {model!r} (vision={name!r}, pretrained tag {tag!r}) could not "
        f"be found locally or downloaded ({reason}). Pass a local checkpoint path, e.g. "
        'VisionSettings(pretrained="/path/to/open_clip_model.safetensors"), or pretrained=False for a '
        "randomly initialised tower."
    )


def _offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.upper() in ("1", "ON", "YES", "TRUE") or bool(hf_constants.HF_HUB_OFFLINE)


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Does `url`'s host accept a TCP connection within `timeout`? (Assumed yes behind a proxy.)"""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    parsed = urlparse(url)
    try:
        port = parsed.port or (80 if parsed.scheme == "http" else 443)
        socket.create_connection((parsed.hostname or url, port), timeout=timeout).close()
        return True
    except (OSError, ValueError):
        return False


def _cached_hub_file(hub: str, cache_dir: str | None) -> str | None:
    constants = _open_clip().constants
    repo, filename = os.path.split(hub)  # "org/repo/" -> ("org/repo", "")
    filename = filename or constants.HF_WEIGHTS_NAME
    safe = os.path.splitext(filename)[0] + ".safetensors"
    if filename == constants.HF_WEIGHTS_NAME:
        safe = constants.HF_SAFE_WEIGHTS_NAME
    for fname in (safe, filename):
        found = try_to_load_from_cache(repo, fname, cache_dir=cache_dir)
        if isinstance(found, str):
            return found
    return None


def _cached_url_file(url: str, cache_dir: str | None) -> str | None:
    path = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
    return path if url and os.path.isfile(path) else None


def load_into(module: nn.Module, path: str) -> None:
    """Load the image-tower part of the checkpoint at `path` into `module` (an open_clip `visual`
    or a timm trunk); `visual.` / `trunk.` key prefixes are stripped. Missing keys raise."""
    state = _strip(_read_state_dict(path), "visual.")
    if hasattr(module, "forward_features"):  # a timm trunk
        state = _strip(state, "trunk.")
    if "positional_embedding" in state and hasattr(module, "grid_size"):
        holder = {"visual.positional_embedding": state["positional_embedding"]}
        _open_clip().model.resize_pos_embed(holder, SimpleNamespace(visual=module))  # checkpoint grid -> tower grid
        state["positional_embedding"] = holder["visual.positional_embedding"]
    missing, _ = module.load_state_dict(state, strict=False)
    if missing:
        raise RuntimeError(
            f"checkpoint {path} does not fit the {type(module).__name__} vision tower: "
            f"{len(missing)} missing key(s), e.g. {missing[:4]}"
        )


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if not any(k.startswith(prefix) for k in state):
        return state
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _read_state_dict(path: str) -> dict[str, Tensor]:
    """Read a checkpoint; from a .safetensors file only the `visual.` tensors when it has any."""
    if not path.endswith(".safetensors"):
        return _open_clip().factory.load_state_dict(path)
    with safe_open(path, framework="pt") as f:
        names = list(f.keys())  # a safe_open handle is not iterable itself
        keys = [k for k in names if k.startswith("visual.")] or names
        return {k: f.get_tensor(k) for k in keys}


__all__ = ["load_into", "resolve_weights", "weights_error"]
