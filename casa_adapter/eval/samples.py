"""Evaluation samples: every sample of some shards, in order, as a prompt and its reference answers.

Each sample goes through the data pipeline's checks (`decode.validate`: json, chat form, image
count, image decoding, video frame sampling), then the prompt is the chat up to its last
assistant turn, rendered with the generation prompt (`Processor(..., add_generation_prompt=True)`).
The references are the json's `answers` list when it has one, else the last assistant message.
A bad sample is skipped and counted under its reason (`data.counters`), never fatal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from casa_adapter.data.chat import IMAGE, SampleError, parse_json
from casa_adapter.data.counters import BadEvent, BadSampleCounter
from casa_adapter.data.decode import DecodeSettings, validate
from casa_adapter.data.shards import SampleRef, ShardReader, SourceIndex


@dataclass
class EvalSample:
    """One sample to answer: its identity, question, references, and the processed prompt."""

    id: str
    """The json's `id`, else the sample's key in its shard."""
    source: str
    """Name of the source (shard spec) it came from."""
    question: str
    """The last user message of the prompt (placeholders kept)."""
    answers: list[str]
    """Reference answers."""
    qtype: str | None
    """The json's `qtype` (question type), if any."""
    inputs: dict
    """`Processor` output for the prompt: `input_ids`, `attention_mask`, `images`."""

    def record(self, prediction: str) -> dict:
        """The JSONL line for this sample (`qtype` only when the sample has one)."""
        line: dict[str, Any] = {
            "id": self.id,
            "question": self.question,
            "answers": self.answers,
            "prediction": prediction,
        }
        if self.qtype is not None:
            line["qtype"] = self.qtype
        line["source"] = self.source
        return line


def references(obj: dict, messages: list[dict[str, str]]) -> list[str]:
    """The json's `answers` (a list of strings, or one string), else the last assistant message."""
    answers = obj.get("answers")
    if isinstance(answers, str):
        answers = [answers]
    if isinstance(answers, list) and answers and all(isinstance(a, (str, int, float)) for a in answers):
        return [str(a) for a in answers]
    return [next(m["content"] for m in reversed(messages) if m["role"] == "assistant").strip()]


def prompt_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The chat up to (not including) its last assistant turn."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


def ask(messages: list[dict[str, str]], question: Callable[[str], str]) -> list[dict[str, str]]:
    """The chat with `question` applied to its last user message (a protocol's prompt suffix)."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    return [{**m, "content": question(m["content"])} if i == last else m for i, m in enumerate(messages)]


def to_sample(
    ref: SampleRef,
    members: dict[str, bytes],
    source: str,
    processor: Any,
    settings: DecodeSettings,
    question: Callable[[str], str] = str,
) -> EvalSample:
    """A raw sample -> `EvalSample` (`question` rewrites the last user message), or `SampleError` with the
    reason it is bad."""
    chat, images = validate(ref, members, settings)
    obj = parse_json(members.get("json"))
    prompt = ask(prompt_messages(chat.messages), question)
    n_images = sum(m["content"].count(IMAGE) for m in prompt)
    try:
        inputs = processor({"messages": prompt}, images[:n_images] or None, add_generation_prompt=True)
    except ValueError as e:
        raise SampleError("processor_error", str(e)) from None
    question = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
    qtype = obj.get("qtype")
    return EvalSample(
        id=str(obj.get("id", ref.key)),
        source=source,
        question=question,
        answers=references(obj, chat.messages),
        qtype=None if qtype is None else str(qtype),
        inputs=inputs,
    )


def read_samples(
    indexes: list[SourceIndex],
    processor: Any,
    settings: DecodeSettings,
    counter: BadSampleCounter,
    on_bad: Callable[[], None] = lambda: None,
    question: Callable[[str], str] = str,
) -> Iterator[EvalSample]:
    """Every good sample of `indexes`, in order (`question` rewrites each last user message); bad ones are
    counted in `counter` (and logged), and `on_bad()` is called for each."""
    reader = ShardReader()
    for index in indexes:
        for ref in index.refs:
            try:
                sample = to_sample(ref, reader.read(ref), index.name, processor, settings, question)
            except SampleError as e:
                counter.add_bad(BadEvent(e.reason, ref.shard, ref.key, e.detail))
                on_bad()
                continue
            counter.good += 1
            counter.sources[index.name] += 1
            yield sample
