"""ServeEngine in process: answers equal the model's own generate(), sessions advance together, refusals."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

import casa_adapter
from casa_adapter.backbone.base_models import load_base
from casa_adapter.processor import Processor
from casa_adapter.serve import ServeEngine, ServeSettings
from tests.conftest import randomize_new_params


def tiny_model(fusion="casa"):
    llm, tokenizer = load_base("tiny")
    model = casa_adapter.wrap(llm, vision="siglip-tiny", pretrained=False, pool=2, fusion=fusion, init="copy")
    randomize_new_params(model)  # so images change the answers
    return model.eval(), tokenizer


def picture(seed: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((40, 50, 3)) * 255).astype("uint8"))


def chat(text: str, n_images: int, max_tokens: int = 6) -> dict:
    parts = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
    return {
        "op": "chat",
        "messages": [{"role": "user", "content": parts}],
        "images": [picture(k) for k in range(n_images)],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
    }


def run(engine: ServeEngine) -> dict[str, list[dict]]:
    """Step until idle: every request's replies, in order."""
    out: dict[str, list[dict]] = {}
    for _ in range(1000):
        if not engine.busy:
            return out
        for reply in engine.step():
            out.setdefault(reply.uid, []).append(reply.payload)
    raise AssertionError("the engine did not finish")


@pytest.mark.parametrize("fusion", ["casa", "insertion"])
def test_concurrent_chats_equal_generate_alone(fusion):
    """Three chats in one batch (0, 1 and 2 images): each answer's ids equal model.generate() greedy on it alone,
    and the streamed deltas add up to the final text."""
    model, tokenizer = tiny_model(fusion)
    engine = ServeEngine(model, tokenizer, ServeSettings())
    requests = {"a": chat("Hello there", 0), "b": chat("What is it?", 1), "c": chat("Compare", 2, max_tokens=4)}
    for uid, request in requests.items():
        engine.submit(uid, request)
    replies = run(engine)
    processor = Processor.from_model(model, tokenizer)
    for uid, request in requests.items():
        inputs = processor(
            request["messages"], request["images"] or None, add_generation_prompt=True, return_tensors="pt"
        )
        with torch.no_grad():
            expected = model.generate(**inputs, max_new_tokens=request["max_tokens"], do_sample=False)
        expected = expected[0, inputs["input_ids"].shape[1] :].tolist()
        done = replies[uid][-1]
        assert done["kind"] == "done" and done["finish_reason"] in ("length", "stop")
        assert (
            tokenizer(done["text"], add_special_tokens=False)["input_ids"]
            == tokenizer(tokenizer.decode(expected, skip_special_tokens=True), add_special_tokens=False)["input_ids"]
        )
        deltas = "".join(r["text"] for r in replies[uid] if r["kind"] == "delta") + done["tail"]
        assert deltas == done["text"]
    assert engine.metrics()["sessions"] == 0 and engine.streams.sessions == []  # chat sessions are closed


def test_video_session_state_stays_bounded_by_text():
    """32 frames with a question every 8: CASA's session state grows only with the text positions (each frame is
    one position and its window's keys are dropped when the next opens)."""
    model, tokenizer = tiny_model("casa")
    engine = ServeEngine(model, tokenizer, ServeSettings())
    engine.submit("open", {"op": "create"})
    sid = run(engine)["open"][0]["id"]
    states = []
    for k in range(32):
        engine.submit(f"f{k}", {"op": "frame", "session": sid, "image": picture(k)})
        frame = run(engine)[f"f{k}"][-1]
        if k % 8 == 7:
            ask = {"op": "text", "session": sid, "text": "What now?", "max_tokens": 3, "temperature": 0.0}
            engine.submit(f"q{k}", ask | {"stream": False})
            answer = run(engine)[f"q{k}"][-1]
            assert answer["kind"] == "done" and answer["usage"]["completion_tokens"] == 3
            states.append((answer["positions"], answer["state_bytes"]))
        assert frame["frames"] == k + 1
    per_position = [(b2 - b1) / (p2 - p1) for (p1, b1), (p2, b2) in itertools.pairwise(states)]
    assert max(per_position) == pytest.approx(min(per_position), rel=0.01), states  # linear in positions only
    assert states[-1][0] == 32 + 4 * (len(tokenizer("What now?", add_special_tokens=False)["input_ids"]) + 3)


def test_refusals_name_the_problem():
    model, tokenizer = tiny_model("casa")
    engine = ServeEngine(model, tokenizer, ServeSettings(max_sessions=2, max_cache_tokens=64, evict="error"))
    engine.submit("s1", {"op": "create"})
    engine.submit("s2", {"op": "create"})
    engine.submit("s3", {"op": "create"})
    engine.submit("unknown", {"op": "frame", "session": "nope", "image": picture(0)})
    out = run(engine)
    assert out["s3"][0]["status"] == 429 and "max_sessions=2" in out["s3"][0]["message"]
    assert out["unknown"][0]["status"] == 404
    sid = out["s1"][0]["id"]
    long = {"op": "text", "session": sid, "text": "word " * 80, "max_tokens": 1, "temperature": 0.0, "stream": False}
    engine.submit("long", long)
    engine.submit(
        "empty",
        {"op": "text", "session": out["s2"][0]["id"], "text": "", "max_tokens": 2, "temperature": 0.0, "stream": False},
    )
    out = run(engine)
    assert out["long"][0]["status"] == 400 and "max_cache_tokens=64" in out["long"][0]["message"]
    assert out["empty"][0]["status"] == 400 and "holds nothing yet" in out["empty"][0]["message"]
    engine.submit("busy1", {"op": "frame", "session": sid, "image": picture(1)})
    engine.submit("busy2", {"op": "frame", "session": sid, "image": picture(2)})
    out = run(engine)
    assert out["busy1"][-1]["kind"] == "done" and out["busy2"][0]["status"] == 409
    engine.submit("close", {"op": "close", "session": sid})
    engine.submit("again", {"op": "frame", "session": sid, "image": picture(3)})
    out = run(engine)
    assert out["close"][0]["deleted"] and out["again"][0]["status"] == 404
    assert engine.metrics()["refused"] == 6


def test_context_length_and_idle_expiry():
    model, tokenizer = tiny_model("casa")
    engine = ServeEngine(model, tokenizer, ServeSettings(session_idle_s=0.0))
    engine.budget.max_positions = 40
    engine.submit("chat", chat("hi " * 30, 0, max_tokens=20))
    engine.submit("open", {"op": "create"})
    out = run(engine)
    assert out["chat"][0]["status"] == 400 and "past the model's 40" in out["chat"][0]["message"]
    assert engine.streams.sessions == []  # the refused chat's session is gone
    sid = out["open"][0]["id"]
    engine.step()  # idle for session_idle_s=0: expired
    engine.submit("late", {"op": "frame", "session": sid, "image": picture(0)})
    assert run(engine)["late"][0]["status"] == 404
