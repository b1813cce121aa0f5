"""Converters to WebDataset shards: LLaVA-Instruct json + image folder, and image + caption folders.

Image bytes are copied as they are when PIL-readable formats the loader takes (jpg, jpeg,
png, webp); other formats (gif, bmp, tiff, ...) are re-encoded to png. Entries that cannot be
written (an image file that does not exist or does not decode, a caption file missing) are
skipped, counted in the returned summary and logged with their id; everything else is written
and left to the loader's checks (`casa-adapter data check` reports them).

A LLaVA json is often downloaded, so its `image` paths are not trusted: each must resolve
(symlinks followed) to a file inside `--images`. An entry with a path that leaves it (`../`, an
absolute path elsewhere, a symlink pointing out) is skipped as `outside_images`, with its id.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections import Counter

from PIL import Image

from casa_adapter.data.chat import IMAGE, IMAGE_EXTS, dumps
from casa_adapter.data.writer import ShardSink, safe_key
from casa_adapter.progress import progress_bar

log = logging.getLogger("casa_adapter.data")
CAPTION_PROMPT = "Describe the image."


def load_entries(path: str) -> list[dict]:
    """A LLaVA json list, or one entry per line for `.jsonl`."""
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in f if line.strip()]
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a json list of LLaVA entries, got {type(data).__name__}")
    return data


def image_member(path: str) -> tuple[str, bytes]:
    """(extension, bytes) for an image file; re-encoded to png when the loader cannot take its format."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    with open(path, "rb") as f:
        data = f.read()
    if ext in IMAGE_EXTS:
        return ext, data
    out = io.BytesIO()
    with Image.open(io.BytesIO(data)) as im:
        im.convert("RGB").save(out, format="PNG")
    return "png", out.getvalue()


def _members(paths: list[str]) -> dict[str, bytes]:
    """Image members: `KEY.ext` for one image, `KEY.0.ext, KEY.1.ext, ...` for several."""
    pairs = [image_member(p) for p in paths]
    if len(pairs) == 1:
        return {pairs[0][0]: pairs[0][1]}
    return {f"{k}.{ext}": data for k, (ext, data) in enumerate(pairs)}


def _with_placeholders(conversations: list, n_images: int) -> list:
    """LLaVA's convention: images with no `<image>` in the chat go before the first human turn."""
    if n_images == 0 or any(IMAGE in str(turn.get("value", "")) for turn in conversations if isinstance(turn, dict)):
        return conversations
    first = next((i for i, t in enumerate(conversations) if isinstance(t, dict) and t.get("from") == "human"), None)
    if first is None:
        return conversations
    turns = [dict(t) for t in conversations]
    turns[first]["value"] = f"{IMAGE}\n" * n_images + str(turns[first].get("value", ""))
    return turns


def inside(root: str, relative: str) -> str | None:
    """The real path of `relative` joined onto `root` if it stays inside `root` (symlinks resolved), else None."""
    real_root = os.path.realpath(root)
    path = os.path.realpath(os.path.join(real_root, relative))
    return path if os.path.commonpath([path, real_root]) == real_root else None


def convert_llava(json_path: str, images: str, out: str, maxcount: int = 1000, show_progress: bool = True) -> Counter:
    """LLaVA-Instruct json (`id`, `image`: a path or a list of paths under `images`, `conversations`)
    -> shards in `out`. Returns counts: written, skipped/<reason>."""
    entries = load_entries(json_path)
    summary: Counter = Counter()
    seen: set[str] = set()
    with ShardSink(out, maxcount) as sink, progress_bar("convert llava", len(entries), show_progress) as advance:
        for i, entry in enumerate(entries):
            advance()
            rel = entry.get("image") or []
            rel = [rel] if isinstance(rel, str) else list(rel)
            ident = str(entry.get("id", i))
            paths = [inside(images, str(r)) for r in rel]
            if None in paths:
                outside = [str(r) for r, p in zip(rel, paths) if p is None]
                summary["skipped/outside_images"] += 1
                log.warning("convert llava: skipped entry %r: outside_images (%s leaves %s)", ident, outside, images)
                continue
            try:
                members = _members(paths)
            except (OSError, ValueError) as e:
                reason = "missing_image" if isinstance(e, FileNotFoundError) else "corrupt_image"
                summary[f"skipped/{reason}"] += 1
                log.warning("convert llava: skipped entry %r: %s (%s)", ident, reason, e)
                continue
            record = {"id": ident, "conversations": _with_placeholders(entry.get("conversations", []), len(paths))}
            if rel:
                record["image"] = rel
            key = _unique(safe_key(ident), seen)
            sink.write(key, {"json": dumps(record), **members})
            summary["written"] += 1
    summary["shards"] = sink.shards
    return summary


def _unique(key: str, seen: set[str]) -> str:
    base, n = key, 1
    while key in seen:
        key, n = f"{base}_{n}", n + 1
    seen.add(key)
    return key


def caption_pairs(folder: str) -> list[tuple[str, str | None]]:
    """(image path, caption path or None) for every image under `folder` (sorted, recursive);
    the caption of `a/b.jpg` is `a/b.txt`."""
    pairs = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() in (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"):
                caption = os.path.join(root, stem + ".txt")
                pairs.append((os.path.join(root, name), caption if os.path.isfile(caption) else None))
    return pairs


def convert_folder(
    images: str, out: str, prompt: str = CAPTION_PROMPT, maxcount: int = 1000, show_progress: bool = True
) -> Counter:
    """Image + caption pairs (`x.jpg` + `x.txt`) -> captioning chats in shards. Returns counts."""
    pairs = caption_pairs(images)
    summary: Counter = Counter()
    seen: set[str] = set()
    with ShardSink(out, maxcount) as sink, progress_bar("convert folder", len(pairs), show_progress) as advance:
        for image, caption in pairs:
            advance()
            ident = os.path.splitext(os.path.relpath(image, images))[0]
            try:
                if caption is None:
                    raise FileNotFoundError(f"no caption file {os.path.splitext(image)[0]}.txt")
                with open(caption, encoding="utf-8") as f:
                    text = f.read().strip()
                members = _members([image])
            except (OSError, ValueError) as e:
                reason = "missing_caption" if caption is None else "unreadable"
                summary[f"skipped/{reason}"] += 1
                log.warning("convert folder: skipped %r: %s (%s)", ident, reason, e)
                continue
            record = {
                "id": ident,
                "messages": [{"role": "user", "content": f"{IMAGE}\n{prompt}"}, {"role": "assistant", "content": text}],
            }
            sink.write(_unique(safe_key(ident), seen), {"json": dumps(record), **members})
            summary["written"] += 1
    summary["shards"] = sink.shards
    return summary
