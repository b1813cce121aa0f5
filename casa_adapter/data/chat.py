"""The sample format: a sample's json (+ image member names) -> a chat with `<image>` placeholders.

Four json forms (see docs/data.md):

- LLaVA: `{"conversations": [{"from": "human"|"gpt"|"system", "value": "..."}]}`
- messages: `{"messages": [{"role": "user"|"assistant"|"system", "content": "..."}]}`
- video: one of the above with a single `<video>` placeholder and `"video": {"timestamps": [...]}`;
  frames are the numbered images `KEY.0.jpg, KEY.1.jpg, ...`, sampled at a chosen fps.
- streaming captions: `{"stream": [{"t": 0.0, "text": "..."}, ...], "prompt": "..."?}`: frame i
  opens a user turn, the text spoken/written after it is the assistant turn.

Images are `KEY.jpg|jpeg|png|webp` (one) or numbered `KEY.0.png, KEY.1.png, ...` in order.
Errors raise `SampleError(reason)` with a reason from `counters.REASONS`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from casa_adapter.messages import normalize_chat

IMAGE = "<image>"
VIDEO = "<video>"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_NUMBERED = re.compile(r"^(\d+)\.(jpg|jpeg|png|webp)$")


class SampleError(Exception):
    """A sample is bad for `reason` (a key of `counters.REASONS`)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class Chat:
    """A sample's chat in `messages` form, and the image members its placeholders stand for."""

    messages: list[dict[str, str]]
    image_exts: list[str]
    """Member extensions (`jpg`, `0.png`, ...) in placeholder order."""


def parse_json(raw: bytes | None) -> dict:
    """Bytes of KEY.json -> a non-empty dict, or `SampleError` (missing/empty/invalid json, not UTF-8)."""
    if raw is None:
        raise SampleError("missing_json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SampleError("not_utf8", str(e)) from None
    if not text.strip():
        raise SampleError("empty_json")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise SampleError("invalid_json", str(e)) from None
    if not obj:
        raise SampleError("empty_json")
    if not isinstance(obj, dict):
        raise SampleError("invalid_chat", f"top level is a {type(obj).__name__}, not an object")
    return obj


def read_chat(obj: dict, exts: list[str], fps: float, max_frames: int) -> Chat:
    """Build the chat of a parsed json, given the sample's member extensions."""
    if "stream" in obj:
        messages, images = _stream_messages(obj, _numbered_images(exts))
    else:
        messages, images = _messages(obj), image_members(exts)
        if "video" in obj:
            messages, images = _expand_video(messages, obj["video"], images, fps, max_frames)
    _check_text(messages)
    n_placeholders = sum(m["content"].count(IMAGE) for m in messages)
    if n_placeholders > len(images):
        raise SampleError("missing_image", f"{n_placeholders} <image> placeholders, {len(images)} images")
    if n_placeholders < len(images):
        raise SampleError("image_count_mismatch", f"{n_placeholders} <image> placeholders, {len(images)} images")
    return Chat(messages, images)


def image_members(exts: list[str]) -> list[str]:
    """Image members in order: the single `KEY.jpg`, or the numbered `KEY.0.jpg, KEY.1.jpg, ...`."""
    single = [e for e in exts if e in IMAGE_EXTS]
    numbered = _numbered_images(exts)
    if single and numbered:
        raise SampleError("image_count_mismatch", f"both {single} and numbered images {numbered}")
    return single or numbered


def _numbered_images(exts: list[str]) -> list[str]:
    found = sorted((int(m.group(1)), e) for e in exts if (m := _NUMBERED.match(e)))
    for position, (index, ext) in enumerate(found):
        if index != position:
            raise SampleError("missing_image", f"numbered images jump to {ext} at position {position}")
    return [e for _, e in found]


def _messages(obj: dict) -> list[dict[str, str]]:
    if not any(isinstance(obj.get(k), list) for k in ("conversations", "messages")):
        raise SampleError("invalid_chat", f"no `conversations`, `messages` or `stream` list (keys: {sorted(obj)})")
    try:
        return normalize_chat(obj, IMAGE)
    except ValueError as e:
        raise SampleError("invalid_chat", str(e)) from None


def _check_text(messages: list[dict[str, str]]) -> None:
    for m in messages:
        try:
            m["content"].encode("utf-8")
        except UnicodeEncodeError as e:
            raise SampleError("not_utf8", str(e)) from None
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise SampleError("no_assistant_turn", f"roles: {[m['role'] for m in messages]}")


def select_frames(timestamps: list[float], fps: float, max_frames: int) -> list[int]:
    """Frame indices closest to the times 0, 1/fps, 2/fps, ... (unique, in order), at most `max_frames`
    (evenly thinned when there are more)."""
    if not timestamps:
        return []
    start, end = timestamps[0], timestamps[-1]
    picked: list[int] = []
    for step in range(int((end - start) * fps + 1e-6) + 1):
        target = start + step / fps
        best = min(range(len(timestamps)), key=lambda i: abs(timestamps[i] - target))
        if not picked or best > picked[-1]:
            picked.append(best)
    if len(picked) > max_frames:
        picked = [picked[round(i * (len(picked) - 1) / max(max_frames - 1, 1))] for i in range(max_frames)]
    return picked


def _expand_video(messages, video, frames, fps, max_frames):
    timestamps = video.get("timestamps") if isinstance(video, dict) else video
    if not isinstance(timestamps, list) or not all(isinstance(t, (int, float)) for t in timestamps):
        raise SampleError("invalid_chat", "`video` needs a list of `timestamps`")
    if sum(m["content"].count(VIDEO) for m in messages) != 1 or any(IMAGE in m["content"] for m in messages):
        raise SampleError("image_count_mismatch", "a video sample needs exactly one <video> and no <image>")
    if len(frames) != len(timestamps):
        reason = "missing_image" if len(frames) < len(timestamps) else "image_count_mismatch"
        raise SampleError(reason, f"{len(timestamps)} timestamps, {len(frames)} frames")
    keep = select_frames([float(t) for t in timestamps], fps, max_frames)
    text = "".join(f"[{timestamps[i]:.1f}s]{IMAGE}" for i in keep)
    messages = [{"role": m["role"], "content": m["content"].replace(VIDEO, text)} for m in messages]
    return messages, [frames[i] for i in keep]


def _stream_messages(obj: dict, frames: list[str]):
    stream = obj["stream"]
    if not isinstance(stream, list) or not all(isinstance(e, dict) and isinstance(e.get("text"), str) for e in stream):
        raise SampleError("invalid_chat", "`stream` needs a list of {t, text}")
    if len(frames) != len(stream):
        reason = "missing_image" if len(frames) < len(stream) else "image_count_mismatch"
        raise SampleError(reason, f"{len(stream)} stream entries, {len(frames)} frames")
    prompt = obj.get("prompt")
    pending, used, messages = (f"{prompt}\n" if isinstance(prompt, str) and prompt else ""), [], []
    for frame, entry in zip(frames, stream):
        pending += IMAGE
        used.append(frame)
        if entry["text"].strip():
            messages += [{"role": "user", "content": pending}, {"role": "assistant", "content": entry["text"]}]
            pending = ""
    if pending:
        used = used[: len(used) - pending.count(IMAGE)]
    return messages, used


def dumps(obj: dict) -> bytes:
    """The json bytes written for a sample (UTF-8, compact, keys in insertion order)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
