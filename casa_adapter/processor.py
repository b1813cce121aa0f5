"""Turn a chat with `<image>` placeholders and a list of images into CASA model inputs.

The chat (LLaVA `conversations` or HF `messages`) is normalised, rendered with the tokenizer's
chat template, cut at placeholders and at assistant-turn boundaries, and each piece tokenised on
its own (no added special tokens: templates carry their own BOS). Each placeholder becomes one
`image_token_id` marker: one past the LLM's embedding table, it takes one text position and
opens the image's window (consecutive markers: several images at one point). Labels keep the
assistant turns (answer + end-of-turn tokens), -100 elsewhere. Optional framing text
(`pre_image`, `post_image`, as Kyutai's processors use) goes before and after each run of adjacent
markers, so there is always text right after an image to read it. See docs/processor.md.

    >>> proc = Processor.from_model(model, tokenizer)  # doctest: +SKIP
    >>> batch = proc.collate([proc(s["conversations"], s["images"]) for s in samples])  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from casa_adapter.messages import KEEP, Message, normalize_chat

IGNORE_INDEX = -100
"""Label of every token that carries no loss (prompt, markers, padding)."""


@dataclasses.dataclass
class _Piece:
    """A run of rendered text with its loss flag, or one image placeholder (`text is None`)."""

    text: str | None
    trained: bool = False


class Processor:
    """Chat + images -> `input_ids` / `attention_mask` / `labels` / `images` for a CASA model.

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template.
        image_token_id: the model's image marker id (`CasaModel.image_token_id`).
        image_transform: maps one image (PIL image, ndarray or tensor) to a `(3, H, W)` tensor;
            required as soon as images are given.
        placeholder: the text that marks an image in the chat.
        max_length: longest sequence accepted; a longer one raises ValueError.
        system_prompt: `...` (default) keeps the chat's own system message or the template's
            default; a string is used as the system message when the chat has none; None drops
            the chat's system messages (a template with a built-in default still adds it).
        pre_image, post_image: text put right before / after each run of adjacent placeholders (one
            window), tokenised on its own, never trained (-100 labels); "" (default) for none. Give a
            streaming session the same framing with `model.stream(**proc.framing_ids())`.

    Example:
        >>> proc = Processor(tok, image_token_id=len(tok), image_transform=to_tensor)  # doctest: +SKIP
        >>> out = proc({"conversations": [{"from": "human", "value": "<image>\\nWhat is it?"},  # doctest: +SKIP
        ...                               {"from": "gpt", "value": "A cat."}]}, [img])
        >>> out["input_ids"].shape, out["images"].shape  # doctest: +SKIP
        (torch.Size([T]), torch.Size([1, 3, H, W]))
    """

    def __init__(
        self,
        tokenizer: Any,
        image_token_id: int,
        image_transform: Callable[[Any], Any] | None = None,
        placeholder: str = "<image>",
        max_length: int | None = None,
        system_prompt: Any = KEEP,
        pre_image: str = "",
        post_image: str = "",
    ) -> None:
        if not placeholder:
            raise ValueError("placeholder must be a non-empty string")
        self.tokenizer = tokenizer
        self.image_token_id = int(image_token_id)
        self.image_transform = image_transform
        self.placeholder = placeholder
        self.max_length = max_length
        self.system_prompt = system_prompt
        self.pre_image, self.post_image = pre_image, post_image

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, **kw: Any) -> Processor:
        """A processor for `model`: its `image_token_id` and its vision tower's `transform`
        (when `model.vision` is set); any keyword given here wins."""
        vision = getattr(model, "vision", None)
        kw.setdefault("image_transform", vision.image_transform() if vision is not None else None)
        kw.setdefault("image_token_id", model.image_token_id)
        return cls(tokenizer, **kw)

    # ---- one sample -------------------------------------------------------------------------

    def __call__(
        self, chat: Any, images: Any = None, *, add_generation_prompt: bool = False, return_tensors: str | None = None
    ) -> dict:
        """Process one chat (a list of messages, a dict holding one, or a plain string: one user message).
        Returns `input_ids`, `attention_mask`, `labels` (LongTensor `(T,)`) and `images` (`(n, 3, H, W)`
        float tensor, or None without images).

        `add_generation_prompt=True` is for inference: the text ends with the template's generation
        prompt and every label is -100. `return_tensors="pt"` returns a batch of one, ready for
        `model.generate(**inputs)` / `model(**inputs)`: `input_ids` and `attention_mask` `(1, T)`,
        `images` a one-entry list, and no `labels` with `add_generation_prompt`.
        """
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}")
        if isinstance(chat, str):
            chat = [{"role": "user", "content": chat}]
        out = self._process(chat, images, add_generation_prompt)
        if return_tensors is None:
            return out
        batch = {"input_ids": out["input_ids"][None], "attention_mask": out["attention_mask"][None]}  # (1, T)
        batch["images"] = None if out["images"] is None else [out["images"]]
        if not add_generation_prompt:
            batch["labels"] = out["labels"][None]
        return batch

    def _process(self, chat: Any, images: Any, add_generation_prompt: bool) -> dict:
        messages = normalize_chat(chat, self.placeholder, self.system_prompt)
        pieces = self._pieces(messages, add_generation_prompt)
        n_markers = sum(p.text is None for p in pieces)
        image_list = _as_image_list(images)
        if n_markers != len(image_list):
            raise ValueError(
                f"chat has {_count(n_markers, self.placeholder + ' placeholder')} but "
                f"{_count(len(image_list), 'image')} {'was' if len(image_list) == 1 else 'were'} given"
            )
        ids, labels = self._tokenize(pieces)
        if self.max_length is not None and len(ids) > self.max_length:
            raise ValueError(f"sequence has {len(ids)} tokens, more than max_length={self.max_length}")
        input_ids = torch.tensor(ids, dtype=torch.long)  # (T,)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),  # (T,)
            "labels": torch.tensor(labels, dtype=torch.long),  # (T,)
            "images": self._transform(image_list),  # (n, 3, H, W) or None
        }

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        """The chat template's text for `messages` (role/content dicts)."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(
                f"{type(self.tokenizer).__name__} has no chat template; set `tokenizer.chat_template` "
                "to a Jinja template (e.g. ChatML) before building the Processor"
            )
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _pieces(self, messages: list[Message], add_generation_prompt: bool) -> list[_Piece]:
        """Rendered text cut at assistant-span boundaries and placeholders, in order."""
        text = self.render(messages, add_generation_prompt)
        spans = [] if add_generation_prompt else self._assistant_spans(messages, text)
        cuts = sorted({0, len(text), *(c for span in spans for c in span)})
        pieces: list[_Piece] = []
        for start, end in itertools.pairwise(cuts):
            trained = any(s <= start and end <= e for s, e in spans)
            for k, part in enumerate(text[start:end].split(self.placeholder)):
                if k:
                    pieces.append(_Piece(None))
                if part:
                    pieces.append(_Piece(part, trained))
        return pieces

    def _assistant_spans(self, messages: list[Message], text: str) -> list[tuple[int, int]]:
        """Character spans of the assistant turns in `text` (content + end-of-turn, no header),
        found by rendering prefixes of the chat."""
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            try:
                head = self.render(messages[:i], add_generation_prompt=True)
            except Exception as err:  # e.g. a template that refuses an empty chat
                raise ValueError(f"chat template cannot render the prompt before message {i}: {err}") from err
            turn = self.render(messages[: i + 1])
            if not (turn.startswith(head) and text.startswith(turn)):
                raise ValueError(
                    f"chat template is not prefix-stable at assistant message {i}: rendering the chat "
                    "up to a turn does not give a prefix of the full rendering, so answer tokens "
                    "cannot be located (templates that rewrite earlier turns are not supported)"
                )
            spans.append((len(head), len(turn)))
        return spans

    def framing_ids(self) -> dict[str, list[int]]:
        """`pre_image` / `post_image` as token ids: the keywords of `model.stream(...)` for the same framing."""
        return {"pre_image": self._encode(self.pre_image), "post_image": self._encode(self.post_image)}

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def _tokenize(self, pieces: list[_Piece]) -> tuple[list[int], list[int]]:
        """Token ids and labels for the pieces; one marker per placeholder, framing around each run of them."""
        ids: list[int] = []
        labels: list[int] = []
        framing = self.framing_ids()
        for k, piece in enumerate(pieces):
            if piece.text is None:
                first = k == 0 or pieces[k - 1].text is not None
                last = k == len(pieces) - 1 or pieces[k + 1].text is not None
                piece_ids = (framing["pre_image"] if first else []) + [self.image_token_id]
                piece_ids += framing["post_image"] if last else []
            else:
                piece_ids = list(self.tokenizer.encode(piece.text, add_special_tokens=False))
            ids.extend(piece_ids)
            labels.extend(piece_ids if piece.trained else [IGNORE_INDEX] * len(piece_ids))
        return ids, labels

    def _transform(self, images: list[Any]) -> torch.Tensor | None:
        """Apply `image_transform` to each image and stack them: `(n, 3, H, W)`."""
        if not images:
            return None
        if self.image_transform is None:
            raise ValueError(
                "images were given but the Processor has no image_transform; pass "
                "image_transform=... or build it with Processor.from_model(model, tokenizer)"
            )
        out = [torch.as_tensor(self.image_transform(image)) for image in images]
        shapes = [tuple(image.shape) for image in out]
        if len(set(shapes)) > 1 or len(shapes[0]) != 3 or shapes[0][0] != 3:
            raise ValueError(f"image_transform must return (3, H, W) tensors of one size; got shapes {shapes}")
        return torch.stack(out).float()  # (n, 3, H, W)

    # ---- batches ----------------------------------------------------------------------------

    @property
    def pad_token_id(self) -> int:
        """The tokenizer's pad id, else its eos id."""
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        if pad is None:
            raise ValueError("tokenizer has neither a pad token nor an eos token; set tokenizer.pad_token")
        return int(pad)

    def collate(self, samples: list[dict], padding_side: str = "right") -> dict:
        """Pad processed samples: `input_ids`, `attention_mask`, `labels` `(B, T)` (-100 on pads)
        and `images`, one `(n_i, 3, H, W)` tensor per sample (`(0, 3, H, W)` without images), or
        None when no sample has images. `padding_side`: "right" to train, "left" to generate."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if not samples:
            raise ValueError("collate needs at least one sample")
        width = max(len(s["input_ids"]) for s in samples)
        fills = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        batch = {
            key: torch.stack([_pad(s[key], width, fill, padding_side) for s in samples])  # (B, T)
            for key, fill in fills.items()
        }
        batch["images"] = _batch_images([s.get("images") for s in samples])
        return batch

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        """Text of a 1-D id sequence. Markers are dropped with `skip_special_tokens`, else shown
        as the placeholder; negative ids (-100 labels) are dropped."""
        ids = [i for i in torch.as_tensor(ids).reshape(-1).tolist() if i >= 0]
        parts = []
        for is_marker, run in itertools.groupby(ids, key=lambda i: i == self.image_token_id):
            run = list(run)
            if is_marker:
                parts.append("" if skip_special_tokens else self.placeholder * len(run))
            else:
                parts.append(self.tokenizer.decode(run, skip_special_tokens=skip_special_tokens))
        return "".join(parts)


def _count(n: int, noun: str) -> str:
    """`1 image`, `2 images`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _as_image_list(images: Any) -> list[Any]:
    """None, one image, or a sequence of images -> list of images."""
    if images is None:
        return []
    if isinstance(images, (list, tuple)) or (isinstance(images, torch.Tensor) and images.ndim == 4):
        return list(images)  # a sequence, or an (n, 3, H, W) stack
    return [images]


def _pad(row: torch.Tensor, width: int, fill: int, side: str) -> torch.Tensor:
    """Pad a `(T,)` tensor to `(width,)` with `fill` on `side`."""
    pad = row.new_full((width - row.shape[0],), fill)
    return torch.cat([row, pad] if side == "right" else [pad, row])


def _batch_images(images: list[torch.Tensor | None]) -> list[torch.Tensor] | None:
    """Per-sample image stacks; empty `(0, 3, H, W)` where a sample has none."""
    present = [im for im in images if im is not None and im.shape[0] > 0]
    if not present:
        return None
    empty = present[0].new_zeros((0, *present[0].shape[1:]))  # (0, 3, H, W)
    return [im if im is not None and im.shape[0] > 0 else empty for im in images]
