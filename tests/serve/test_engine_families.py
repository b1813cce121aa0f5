"""ServeEngine over other cache kinds: a hybrid (recurrent states) batches exactly; a sliding-window family holds
one session at a time and says why."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import casa_adapter
from casa_adapter.backbone.base_models import tiny_chat_tokenizer
from casa_adapter.census.tiny import tiny_config
from casa_adapter.processor import Processor
from casa_adapter.serve import ServeEngine, ServeSettings
from tests.conftest import randomize_new_params
from tests.serve.test_engine import chat, run


def tiny_family(model_type: str):
    """A tiny random base of `model_type` with the tiny tokenizer's vocabulary, wrapped, CASA weights nonzero."""
    tokenizer = tiny_chat_tokenizer()
    cfg = tiny_config(model_type)
    cfg.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(cfg).eval()
    model = casa_adapter.wrap(llm, vision="siglip-tiny", pretrained=False, pool=2)
    randomize_new_params(model)
    return model.eval(), tokenizer


def expected_text(model, tokenizer, request: dict) -> str:
    """model.generate() greedy on the request alone, decoded."""
    inputs = Processor.from_model(model, tokenizer)(
        request["messages"], request["images"] or None, add_generation_prompt=True, return_tensors="pt"
    )
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=request["max_tokens"], do_sample=False)
    return tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_hybrid_chats_in_one_batch_equal_generate_alone():
    """Bamba (mamba + attention): three chats of different lengths decoded together, each equal to generate()."""
    model, tokenizer = tiny_family("bamba")
    engine = ServeEngine(model, tokenizer, ServeSettings())
    assert engine.streams.recurrent and engine.capacity == ServeSettings().max_sessions
    requests = {"a": chat("Hello there", 0), "b": chat("What is it?", 1), "c": chat("Compare", 2, max_tokens=4)}
    for uid, request in requests.items():
        engine.submit(uid, request)
    replies = run(engine)
    for uid, request in requests.items():
        assert replies[uid][-1]["kind"] == "done"
        assert replies[uid][-1]["text"] == expected_text(model, tokenizer, request)


def test_sliding_window_family_serves_one_session_at_a_time():
    """Gemma 2's sliding-window layers cannot share a batch: a second session is refused with 429 naming the
    reason, and is taken once the first is done (no failed forward, no wrong answer)."""
    model, tokenizer = tiny_family("gemma2")
    with pytest.raises(ValueError, match="sliding-window .* --evict error"):  # the default evicts windows
        ServeEngine(model, tokenizer, ServeSettings())
    engine = ServeEngine(model, tokenizer, ServeSettings(max_sessions=8, evict="error"))
    assert engine.capacity == 1
    first, second = chat("Hello there", 1), chat("What is it?", 0)
    engine.submit("first", first)
    engine.submit("second", second)
    replies = run(engine)
    assert replies["second"][0]["status"] == 429 and "sliding-window" in replies["second"][0]["message"]
    assert replies["first"][-1]["text"] == expected_text(model, tokenizer, first)
    engine.submit("again", second)
    assert run(engine)["again"][-1]["text"] == expected_text(model, tokenizer, second)


def test_jamba_chats_are_exact_and_a_long_continuation_is_refused():
    """Jamba continues one position per step after a session's first: chats (one prompt, then tokens) equal
    generate(); a video session's multi-token text after its first step gets a 400 naming the reason."""
    model, tokenizer = tiny_family("jamba")
    engine = ServeEngine(model, tokenizer, ServeSettings())
    request = chat("What is it?", 1)
    engine.submit("chat", request)
    engine.submit("create", {"op": "create"})
    out = run(engine)
    assert out["chat"][-1]["text"] == expected_text(model, tokenizer, request)
    sid = out["create"][0]["id"]
    engine.submit("frame", {"op": "frame", "session": sid, "image": chat("", 1)["images"][0]})
    run(engine)
    text = {"op": "text", "session": sid, "text": "What now?", "max_tokens": 2, "temperature": 0.0, "stream": False}
    engine.submit("text", text)
    refused = run(engine)["text"][0]
    assert refused["status"] == 400 and "JambaMambaMixer" in refused["message"]
