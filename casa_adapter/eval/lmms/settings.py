"""`LmmsSettings`: the `--model_args` of `lmms-eval --model casa_adapter`, as one documented dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from casa_adapter.eval.protocol import get_protocol


@dataclass
class LmmsSettings:
    """What `--model_args adapter=DIR,base=NAME,...` sets (lmms-eval turns numbers and true/false into values)."""

    adapter: str
    """An adapter directory, a `save_pretrained` folder (adapter or merged form) or a `CasaModule` `.ckpt`
    (what `casa-adapter export` reads: `casa_adapter.export.sources.load_source`)."""

    base: str | None = None
    """The base LLM (`load_base` names: `smollm2-135m`, `tiny`, a local folder, a `.gguf`, a cached hub id);
    None: the one the adapter records."""

    device: str | None = None
    """Where the model runs ("cuda", "cuda:1", "cpu"); None: "cuda" when there is one, else "cpu"."""

    dtype: str | None = None
    """Cast the model after loading ("bfloat16", "float16", "float32"); None: as it was saved."""

    batch_size: int = 1
    """Requests per `generate` / forward call (left-padded for generation, right-padded for likelihoods)."""

    max_new_tokens: int = 16
    """Tokens generated when the task's `generation_kwargs` give no `max_new_tokens`."""

    video_fps: float = 2.0
    """Frames per second kept from a video file (as `casa-adapter eval --video-fps`)."""

    max_frames: int = 16
    """Most frames kept from one video (as `casa-adapter eval --max-frames`)."""

    system_prompt: str | None = None
    """The system message of every prompt ("" for an empty one); None: the chat template's own behaviour
    (or, for a folder with a saved processor, the processor's)."""

    protocol: str | None = None
    """A `casa_adapter.eval.protocol` name: its answer clean-up ("kyutai": a trailing "." cut) is applied to
    every generation (the prompt suffix belongs to the lmms-eval task)."""

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, str) and not self.batch_size.isdigit():
            raise ValueError(f"batch_size={self.batch_size!r}: casa_adapter takes a number of requests, not 'auto'")
        self.batch_size = int(self.batch_size)
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.video_fps <= 0 or self.max_frames < 1:
            raise ValueError(f"batch_size, max_new_tokens, max_frames must be >= 1 and video_fps > 0: {self}")
        if self.protocol is not None:
            get_protocol(self.protocol)
        for name in ("adapter", "base", "system_prompt"):  # lmms-eval turns "1" into 1
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                setattr(self, name, str(value))

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> LmmsSettings:
        """Settings from parsed model arguments; an unknown one is an error naming the known ones."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(args) - set(known))
        if unknown:
            raise ValueError(f"casa_adapter model: unknown model_args {unknown}; known: {known}")
        if "adapter" not in args:
            raise ValueError("casa_adapter model: give --model_args adapter=DIR (an adapter, a folder or a .ckpt)")
        return cls(**args)


__all__ = ["LmmsSettings"]
