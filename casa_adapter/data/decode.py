"""One raw sample (member bytes) -> a model-ready `Sample`, or a `SampleError` with its reason.

Steps: json -> chat (`chat.py`), images decoded with PIL (never with truncated-image
tolerance: a cut jpeg/png is bad), the `Processor` (tokens, labels on assistant turns only,
the tower's image transform), then the length policy. The budget counts text tokens plus
`image_tokens` for each image; a longer sample is either cut (text from the end, whole images
only: an image whose marker falls past the cut goes with it) or dropped.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image

from casa_adapter.data.chat import Chat, SampleError, parse_json, read_chat
from casa_adapter.data.shards import SampleRef
from casa_adapter.processor import IGNORE_INDEX

BLANK_GREY = (128, 128, 128)
"""The colour of every image under `DecodeSettings.blank_images`."""


@dataclass
class DecodeSettings:
    """How raw samples become model inputs."""

    image_tokens: int | None = None
    """Tokens one image costs in the budget (the vision tower's output length). None: the
    `CasaDataModule` asks the model (`lightning_module.image_tokens`); required elsewhere."""

    max_tokens: int = 1024
    """Budget of one sample (text tokens + image tokens); with packing also the budget of a row."""

    overlength: Literal["truncate", "drop"] = "truncate"
    """`truncate`: cut the text (whole images kept) to fit `max_tokens`; `drop`: skip the sample."""

    video_fps: float = 2.0
    """Frames per second kept from a video sample's frame sequence."""

    max_frames: int = 16
    """Most frames kept from one video (evenly thinned beyond)."""

    blank_images: bool = False
    """Replace every image by a uniform grey one of the same size after it is decoded and checked:
    the text-only control (same prompts, token budget and compute, no visual information)."""

    def __post_init__(self) -> None:
        if self.overlength not in ("truncate", "drop"):
            raise ValueError(f"overlength must be 'truncate' or 'drop', got {self.overlength!r}")
        sizes = (self.max_tokens, self.max_frames, 1 if self.image_tokens is None else self.image_tokens)
        if min(sizes) < 1 or self.video_fps <= 0:
            raise ValueError(f"image_tokens, max_tokens, max_frames and video_fps must be positive: {self}")


@dataclass
class Sample:
    """A processed sample: token ids, labels (-100 outside assistant turns, and at position 0),
    its images `(n, 3, H, W)` in marker order (None without images), and where it came from."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    images: torch.Tensor | None
    source: str
    key: str
    truncated: bool = False

    @property
    def n_images(self) -> int:
        return 0 if self.images is None else int(self.images.shape[0])

    def cost(self, image_tokens: int) -> int:
        """Tokens this sample takes in a packing budget."""
        return int(self.input_ids.shape[0]) + self.n_images * image_tokens


def validate(ref: SampleRef, members: dict[str, bytes], settings: DecodeSettings) -> tuple[Chat, list[Image.Image]]:
    """The checks that need no tokenizer: json, chat form, image count, image decoding."""
    if ref.problem is not None:
        raise SampleError(ref.problem, ref.detail)
    chat = read_chat(parse_json(members.get("json")), list(members), settings.video_fps, settings.max_frames)
    images = [decode_image(members[ext], ext) for ext in chat.image_exts]
    if settings.blank_images:
        images = [Image.new("RGB", im.size, BLANK_GREY) for im in images]
    return chat, images


def decode_image(data: bytes, name: str) -> Image.Image:
    """Fully decode an image to RGB; a corrupt or truncated file raises `SampleError("corrupt_image")`."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise SampleError("corrupt_image", f"{name}: {type(e).__name__}: {e}") from None


def encode(
    processor: Any, chat: Chat, images: list[Image.Image], settings: DecodeSettings, source: str, key: str
) -> Sample:
    """Tokenise with the `Processor`, then apply the length policy."""
    try:
        out = processor({"messages": chat.messages}, images or None)
    except ValueError as e:
        raise SampleError("processor_error", str(e)) from None
    labels = out["labels"].clone()
    labels[0] = IGNORE_INDEX  # never a target: keeps packed and unpacked losses identical
    if not (labels != IGNORE_INDEX).any():
        raise SampleError("no_assistant_turn", "no label left after tokenisation")
    sample = Sample(out["input_ids"], labels, out["images"], source, key)
    if sample.cost(settings.image_tokens) <= settings.max_tokens:
        return sample
    if settings.overlength == "drop":
        raise SampleError("too_long", f"{sample.cost(settings.image_tokens)} tokens > {settings.max_tokens}")
    return truncate(sample, processor.image_token_id, settings)


def truncate(sample: Sample, image_token_id: int, settings: DecodeSettings) -> Sample:
    """Cut the text from the end so that text + kept images fit; images past the cut are dropped
    with their markers, and a trailing marker run (an image with no text after it) is cut too."""
    ids = sample.input_ids
    markers = (ids == image_token_id).long().cumsum(0)  # (T,) images opened up to each position
    cost = torch.arange(1, ids.shape[0] + 1) + markers * settings.image_tokens  # (T,) cost of ids[:t+1]
    length = int((cost <= settings.max_tokens).sum())
    while length and int(ids[length - 1]) == image_token_id:
        length -= 1
    labels = sample.labels[:length]
    if length == 0 or not (labels != IGNORE_INDEX).any():
        raise SampleError(
            "too_long", f"{sample.cost(settings.image_tokens)} tokens > {settings.max_tokens}, and no answer token fits"
        )
    kept = int(markers[length - 1])
    images = None if sample.images is None or kept == 0 else sample.images[:kept]
    return Sample(ids[:length], labels, images, sample.source, sample.key, truncated=True)
