"""An lmms-eval request's text and visuals -> the user message and images casa_adapter's `Processor` takes.

lmms-eval gives a model the task's prompt text and `doc_to_visual(doc)`: PIL images, paths of image
files, or paths of video files. Each image becomes one `<image>` placeholder; a video becomes its
sampled frames written as the data pipeline writes a video sample, `[0.0s]<image>[0.5s]<image>...`
(`video.read_video`). Where the text already holds `<image>` / `<video>` placeholders (interleaved
multi-image tasks), they are filled in order and must match the visuals one for one; otherwise the
placeholders go first, then a new line and the text (`<image>\\nWhat is shown?`, as in the demo set).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from casa_adapter.data.chat import IMAGE, VIDEO
from casa_adapter.eval.lmms.video import read_video

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
"""A visual given as a path with one of these suffixes is an image file; any other path is a video."""


def flatten(visuals: Any) -> list[Any]:
    """Nested lists / tuples of visuals as one flat list (None: no visual)."""
    if visuals is None:
        return []
    if isinstance(visuals, (list, tuple)):
        return [item for entry in visuals for item in flatten(entry)]
    return [visuals]


def expand(visual: Any, fps: float, max_frames: int) -> tuple[str, str, list[Image.Image]]:
    """One visual -> (its kind `<image>` / `<video>`, its placeholder text, its images)."""
    if isinstance(visual, Image.Image):
        return IMAGE, IMAGE, [visual.convert("RGB")]
    if isinstance(visual, (str, Path)) and Path(visual).suffix.lower() in IMAGE_SUFFIXES:
        return IMAGE, IMAGE, [Image.open(visual).convert("RGB")]
    if isinstance(visual, (str, Path)):
        frames, times = read_video(str(visual), fps, max_frames)
        return VIDEO, "".join(f"[{t:.1f}s]{IMAGE}" for t in times), frames
    raise ValueError(
        f"unsupported visual of type {type(visual).__name__}: casa_adapter takes PIL images and image or video paths"
    )


def user_message(context: str, visuals: Sequence[Any], fps: float, max_frames: int) -> tuple[str, list[Image.Image]]:
    """(the user message with one `<image>` per image, the images in marker order) for a request."""
    expanded = [expand(visual, fps, max_frames) for visual in flatten(visuals)]
    parts = re.split(f"({re.escape(IMAGE)}|{re.escape(VIDEO)})", context)
    slots = parts[1::2]
    images = [image for _, _, frames in expanded for image in frames]
    if not slots:
        prefix = "".join(text for _, text, _ in expanded)
        return (f"{prefix}\n{context}" if prefix else context), images
    kinds = [kind for kind, _, _ in expanded]
    if slots != kinds:
        raise ValueError(f"the prompt's placeholders {slots} do not match the request's visuals {kinds}")
    for i, (_, text, _) in enumerate(expanded):
        parts[2 * i + 1] = text
    return "".join(parts), images


__all__ = ["IMAGE_SUFFIXES", "expand", "flatten", "user_message"]
