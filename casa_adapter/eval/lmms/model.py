"""`CasaLmms`: a casa_adapter model behind lmms-eval's model interface (`lmms_eval.api.model.lmms`).

lmms-eval finds it through the `lmms_eval.models` entry point (`manifest.manifest`), so after
`pip install 'casa-adapter[lmms]'`:

    lmms-eval --model casa_adapter --model_args adapter=runs/demo/adapter/final,base=smollm2-135m \\
              --tasks docvqa_val --batch_size 8

- `generate_until`: requests grouped by generation settings, in batches of `batch_size`, answered
  by the same code as `casa-adapter eval` (`eval.run.generate_answers`: left padding, greedy unless
  the task samples, stop at the end-of-turn token), then cut at the task's `until` strings;
- `loglikelihood`: the continuation's negative log-likelihood after the prompt, summed over its tokens
  (`likelihood`): lmms-eval 0.7 scores multiple choice with `argmin`, its own models returning a loss;
- images, several images and videos become `<image>` markers (`prompts`). One process, one device.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.model import lmms

from casa_adapter.eval.lmms.likelihood import continuation_logprobs
from casa_adapter.eval.lmms.prompts import user_message
from casa_adapter.eval.lmms.settings import LmmsSettings
from casa_adapter.eval.protocol import get_protocol
from casa_adapter.eval.run import generate_answers, stop_token_ids
from casa_adapter.export.load import place
from casa_adapter.export.processor_files import PROCESSOR_FILE, load_processor
from casa_adapter.export.sources import load_source
from casa_adapter.processor import Processor
from casa_adapter.progress import progress_bar

SAMPLING_KEYS = ("do_sample", "temperature", "top_p", "num_beams")
"""Task `generation_kwargs` passed on to `generate` (besides `max_new_tokens` and `until`); others are ignored."""


def load(settings: LmmsSettings) -> tuple[Any, Processor]:
    """(model in eval mode on its device, its processor) for `settings.adapter`."""
    model, tokenizer = load_source(settings.adapter, base=settings.base)
    options = {} if settings.system_prompt is None else {"system_prompt": settings.system_prompt}
    if (Path(settings.adapter) / PROCESSOR_FILE).is_file():
        processor = load_processor(settings.adapter, **options)
    elif tokenizer is None:
        raise ValueError(
            f"{settings.adapter}: no tokenizer there; save the model with save_pretrained(..., tokenizer=)"
        )
    else:
        processor = Processor.from_model(model, tokenizer, **options)
    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return place(model, settings.dtype, device).eval(), processor


def sampling(gen_kwargs: dict) -> dict:
    """`generate` keywords for a task's `generation_kwargs`: greedy unless it samples or searches beams."""
    do_sample = bool(gen_kwargs.get("do_sample")) or float(gen_kwargs.get("temperature") or 0) > 0
    options: dict[str, Any] = {"do_sample": do_sample}
    if do_sample:
        options.update({k: gen_kwargs[k] for k in ("temperature", "top_p") if gen_kwargs.get(k) is not None})
    if int(gen_kwargs.get("num_beams") or 1) > 1:
        options["num_beams"] = int(gen_kwargs["num_beams"])
    return options


def cut(text: str, until: list[str]) -> str:
    """`text` up to the first occurrence of any stop string (stripped)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text.strip()


class CasaLmms(lmms):
    """lmms-eval model for casa_adapter adapters, exported folders and checkpoints (`LmmsSettings`)."""

    is_simple = True

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(
                "the casa_adapter lmms-eval model runs in one process on one device (no accelerate launch)"
            )
        self.settings = LmmsSettings.from_args(model_args)
        self.model, self.processor = load(self.settings)
        self.stop_ids = stop_token_ids(self.model, self.processor.tokenizer)
        self.protocol = get_protocol(self.settings.protocol) if self.settings.protocol else None

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> CasaLmms:
        """`--model_args` win over lmms-eval's own `--batch_size` / `--device` (whose defaults it always passes)."""
        from lmms_eval.utils import simple_parse_args_string

        extra = {k: v for k, v in (additional_config or {}).items() if k in ("batch_size", "device") and v is not None}
        return cls(**{**extra, **simple_parse_args_string(arg_string)})

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _doc(self, request) -> dict:
        _, _, _, doc_id, task, split = request.args
        return self.task_dict[task][split][doc_id]

    def _prompt(self, context: str, visuals: Any) -> dict:
        """The processed prompt (generation prompt included) for a request's text and visuals."""
        text, images = user_message(context, visuals, self.settings.video_fps, self.settings.max_frames)
        return self.processor([{"role": "user", "content": text}], images or None, add_generation_prompt=True)

    def generate_until(self, requests) -> list[str]:
        """One answer per request, in request order."""
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
        answers: list[str] = [""] * len(requests)
        with progress_bar("casa_adapter generate", len(requests)) as advance:
            for indices in groups.values():
                gen_kwargs = dict(requests[indices[0]].args[1])
                until = gen_kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                max_new = int(gen_kwargs.get("max_new_tokens") or self.settings.max_new_tokens)
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start : start + self.batch_size]
                    prompts = [
                        self._prompt(requests[i].args[0], requests[i].args[2](self._doc(requests[i]))) for i in chunk
                    ]
                    texts = generate_answers(
                        self.model, self.processor, prompts, max_new, self.stop_ids, **sampling(gen_kwargs)
                    )
                    for i, text in zip(chunk, texts):
                        text = cut(text, until)
                        answers[i] = self.protocol.clean(text) if self.protocol else text
                    advance(len(chunk))
        return answers

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """(negative log-likelihood of the continuation after the prompt, whether it is the greedy one) per request
        (lmms-eval 0.7 takes the smallest value as the model's choice)."""
        results: list[tuple[float, bool]] = []
        with progress_bar("casa_adapter loglikelihood", len(requests)) as advance:
            for start in range(0, len(requests), self.batch_size):
                chunk = requests[start : start + self.batch_size]
                prompts, continuations = [], []
                for request in chunk:
                    context, continuation = request.args[0], request.args[1]
                    doc = self._doc(request) if len(request.args) == 6 else None
                    visuals = request.args[2](doc) if doc is not None else None
                    if not isinstance(continuation, str):  # a `loglikelihood` task passes its doc_to_target
                        continuation = str(continuation(doc))
                    prompts.append(self._prompt(context, visuals))
                    continuations.append(self.processor.tokenizer.encode(continuation, add_special_tokens=False))
                scores = continuation_logprobs(self.model, self.processor, prompts, continuations)
                results += [(-logprob, greedy) for logprob, greedy in scores]
                advance(len(chunk))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("the casa_adapter lmms-eval model answers single-round tasks (generate_until)")


__all__ = ["CasaLmms"]
