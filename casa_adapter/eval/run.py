"""The evaluation loop: samples in order -> left-padded batches -> greedy `generate` -> JSONL + scores.

results = evaluate(model, Processor.from_model(model, tokenizer), EvalSettings(shards=["data/demo/val"]))
results["overall"]["exact_match"]
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from casa_adapter.atomic import atomic_file
from casa_adapter.data.counters import BadSampleCounter
from casa_adapter.data.decode import DecodeSettings
from casa_adapter.data.shards import SourceIndex
from casa_adapter.data.sources import Source
from casa_adapter.eval.protocol import Protocol, get_protocol, protocol_metrics
from casa_adapter.eval.report import Scoreboard, sample_counts
from casa_adapter.eval.samples import EvalSample, read_samples
from casa_adapter.eval.settings import EvalSettings
from casa_adapter.progress import progress_bar


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Ids that end an answer: the LLM's generation-config eos id(s) and the tokenizer's eos id."""
    found = getattr(getattr(model.llm, "generation_config", None), "eos_token_id", None)
    ids = list(found) if isinstance(found, (list, tuple)) else [] if found is None else [found]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("neither the model's generation config nor the tokenizer has an eos token id")
    return sorted({int(i) for i in ids})


def until_stop(row: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """A generated row (n,) up to (not including) its first stop id."""
    hits = torch.isin(row, torch.tensor(stop_ids, device=row.device)).nonzero()
    return row[: int(hits[0])] if len(hits) else row


@torch.no_grad()
def generate_answers(
    model: Any, processor: Any, inputs: list[dict], max_new_tokens: int, stop_ids: list[int], **sampling: Any
) -> list[str]:
    """Answers for processed prompts (one left-padded batch), decoded and stripped; greedy unless `sampling`
    (`generate` keywords: `do_sample`, `temperature`, `top_p`, `num_beams`) says otherwise."""
    batch = processor.collate(inputs, padding_side="left")
    ids = batch["input_ids"].to(model.device)  # (B, T)
    out = model.generate(
        ids,
        attention_mask=batch["attention_mask"].to(model.device),
        images=batch["images"],
        max_new_tokens=max_new_tokens,
        **{"do_sample": False, **sampling},
        eos_token_id=stop_ids,
        pad_token_id=processor.pad_token_id,
    )  # (B, T + n)
    return [processor.decode(until_stop(row, stop_ids)).strip() for row in out[:, ids.shape[1] :]]


def batches(samples: Iterable[EvalSample], size: int) -> Iterator[list[EvalSample]]:
    """Consecutive lists of `size` samples (the last may be shorter)."""
    it = iter(samples)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


@contextlib.contextmanager
def jsonl_writer(path: str | None) -> Iterator[Callable[[dict], None]]:
    """Yields `write(record)`; lines go to `path` atomically, at the end (None: nowhere)."""
    if path is None:
        yield lambda record: None
        return
    with atomic_file(path, "w", encoding="utf-8") as f:
        yield lambda record: f.write(json.dumps(record, ensure_ascii=False) + "\n")


def index_sources(specs: list[str]) -> list[SourceIndex]:
    """One indexed source per shard spec, named by the spec; a missing shard raises FileNotFoundError."""
    if len(set(specs)) != len(specs):
        raise ValueError(f"a shard spec is given twice: {specs}")
    return [SourceIndex.build(Source(shards=spec, name=spec)) for spec in specs]


def scoring(settings: EvalSettings) -> tuple[Protocol | None, Scoreboard]:
    """The protocol `settings` names (None: none) and the scoreboard of its metric, else of `settings.metrics`."""
    if settings.protocol is None:
        return None, Scoreboard(settings.metrics)
    protocol = get_protocol(settings.protocol)
    return protocol, Scoreboard([protocol.metric_for(settings.task)], protocol_metrics)


def evaluate(model: Any, processor: Any, settings: EvalSettings) -> dict:
    """Answer every sample of `settings.shards` in order; write the JSONL; return the results
    (`overall`, `qtypes`, `samples`, `predictions`, and `protocol` with one: see `casa_adapter.eval.report`)."""
    protocol, board = scoring(settings)
    indexes = index_sources(list(settings.shards))
    total = sum(len(index.refs) for index in indexes)
    decode = DecodeSettings(
        video_fps=settings.video_fps, max_frames=settings.max_frames, blank_images=settings.blank_images
    )
    stop_ids = stop_token_ids(model, processor.tokenizer)
    counter = BadSampleCounter()
    model.eval()
    with (
        jsonl_writer(settings.out) as write,
        progress_bar(
            "eval", total if settings.limit is None else min(total, settings.limit), settings.show_progress
        ) as advance,
    ):
        question = protocol.question if protocol else str
        samples = read_samples(indexes, processor, decode, counter, on_bad=lambda: advance(1), question=question)
        for chunk in batches(itertools.islice(samples, settings.limit), settings.batch_size):
            predictions = generate_answers(
                model, processor, [s.inputs for s in chunk], settings.max_new_tokens, stop_ids
            )
            if protocol is not None:
                predictions = [protocol.clean(p) for p in predictions]
            board.update(predictions, [s.answers for s in chunk], [s.qtype for s in chunk])
            for sample, prediction in zip(chunk, predictions):
                write(sample.record(prediction))
            advance(len(chunk))
    results = {**board.results(), "samples": sample_counts(counter), "predictions": settings.out}
    if protocol is not None:
        results["protocol"] = {"name": protocol.name, "task": settings.task, "metric": board.names[0]}
    return results
