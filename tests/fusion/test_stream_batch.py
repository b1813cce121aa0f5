"""Sessions decoded together equal sessions run alone; reset, close and the cache limit."""

import pytest
import torch
from test_stream import FUSIONS, trained

from casa_adapter.fusion.stream import CacheLimitError
from casa_adapter.fusion.stream.batch import HOLE


def turns(seed: int, n_turns: int):
    """A session's script: per turn, a frame (or two together, or none) and some text."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for turn in range(n_turns):
        n_frames = [1, 0, 2][(turn + seed) % 3]
        frames = [torch.rand(3, 16, 16, generator=gen) for _ in range(n_frames)]
        text = torch.randint(1, 90, (int(torch.randint(1, 6, (1,), generator=gen)),), generator=gen)
        out.append((frames, text))
    return out


def put(session, frames, text):
    if frames:
        session.put_image(frames if len(frames) > 1 else frames[0])
    session.put_text(text)


def check_batched_equal_alone(model, atol: float = 1e-5) -> None:
    """Three sessions, one joining late, one idle on some steps, one closing early: each session's logits
    (within `atol`) and generated tokens equal the same session run alone."""
    scripts = {name: turns(seed, 4) for name, seed in (("a", 0), ("b", 1), ("c", 2))}
    active = {"a": range(4), "b": [0, 2, 3], "c": [1, 2]}  # the steps each session feeds a turn at

    alone = {}
    for name, script in scripts.items():
        session, logits = model.stream(), []
        for turn in range(len(active[name])):
            put(session, *script[turn])
            logits.append(session.batch.step()[session])
        alone[name] = (logits, session.generate(max_new_tokens=3)[0])

    streams = model.stream_batch()
    sessions, got = {}, {name: [] for name in scripts}
    for step in range(4):
        for name in scripts:
            if step in active[name]:
                if name not in sessions:
                    sessions[name] = streams.open()
                put(sessions[name], *scripts[name][len(got[name])])
        out = streams.step()
        for name, session in sessions.items():
            if session in out:
                got[name].append(out[session])
        if step == 2:  # c is done: it generates alone, then leaves the batch
            c_new = sessions["c"].generate(max_new_tokens=3)[0]
            sessions.pop("c").close()
    new = streams.generate(list(sessions.values()), max_new_tokens=3)

    for name in scripts:
        assert len(got[name]) == len(alone[name][0])
        for g, a in zip(got[name], alone[name][0]):
            assert g.shape == a.shape
            assert torch.allclose(g, a, atol=atol), (name, float((g - a).abs().max()))
    assert torch.equal(c_new, alone["c"][1])
    for name, session in sessions.items():
        assert torch.equal(new[session][0], alone[name][1])
    assert len(streams.rows) == 2 and len(streams.sessions) == 2


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batched_sessions_equal_sessions_run_alone(family, fusion):
    check_batched_equal_alone(trained(family, fusion))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_reset_and_close(fusion):
    model = trained("llama", fusion)
    session = model.stream()
    session.add_image(torch.rand(3, 16, 16))
    first = session.add_text([5, 6, 7])
    assert session.state_bytes() > 0 and session.cached_tokens() > 0
    session.reset()
    assert session.state_bytes() == 0 and session.index == 0 and session.cached_tokens() == 0
    session.add_image(torch.rand(3, 16, 16))
    session.add_text([1])
    session.reset()
    session.add_image(torch.manual_seed(0) and torch.rand(3, 16, 16))
    torch.manual_seed(0)
    fresh = model.stream()
    fresh.add_image(torch.rand(3, 16, 16))
    assert torch.allclose(session.add_text([5, 6, 7]), fresh.add_text([5, 6, 7]), atol=1e-6)
    assert first.shape == (1, 3, model.config.vocab_size)
    session.close()
    session.close()  # harmless
    with pytest.raises(RuntimeError, match="closed"):
        session.add_text([1])
    assert session.batch.sessions == []


@pytest.mark.parametrize("fusion", FUSIONS)
def test_limit_refuses_input_and_keeps_the_state(fusion):
    model = trained("llama", fusion)
    session = model.stream(max_cache_tokens=12)
    session.add_text(list(range(1, 11)))  # 10 positions
    before = session.state_bytes()
    with pytest.raises(CacheLimitError, match="13 cached positions, over max_cache_tokens=12"):
        session.add_text([1, 2, 3])
    assert session.state_bytes() == before and session.queue == []
    session.add_text([1, 2])  # exactly at the limit
    assert session.cached_tokens() == 12
    with pytest.raises(CacheLimitError):
        session.generate(max_new_tokens=1)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_evict_window_keeps_the_state_bounded(fusion):
    """Forty turns under a limit of two windows and a bit: the oldest windows go, the current one stays, and
    memory stays flat."""
    model = trained("llama", fusion)
    per_turn = (1 if fusion == "casa" else 16) + 4  # marker (CASA) or 16 image tokens (insertion) + 4 text tokens
    limit = 2 * per_turn + 3
    session = model.stream(max_cache_tokens=limit, evict="window")
    sizes = []
    for _ in range(40):
        session.add_image(torch.rand(3, 16, 16))
        logits = session.add_text(torch.randint(1, 90, (4,)))
        assert torch.isfinite(logits).all()
        sizes.append(session.batch.state_bytes())
        assert session.cached_tokens() <= limit
        kept = {int(w) for w in session.batch.slots[0].tolist() if w != HOLE}
        assert kept == {session.window - 1, session.window} - {0}  # two whole windows fit, the oldest went
    assert max(sizes[20:]) <= max(sizes[:20])  # the batch's tensors stop growing (holes are squeezed out)
    assert session.generate(max_new_tokens=2).shape[1] == 2


def test_current_window_over_the_limit_is_refused():
    session = trained("llama", "insertion").stream(max_cache_tokens=10, evict="window")
    with pytest.raises(CacheLimitError, match="window this input belongs to"):
        session.add_image(torch.rand(3, 16, 16))  # 16 image tokens alone


def test_sliding_window_families_run_one_session_per_batch():
    model = trained("gemma2", "casa")
    streams = model.stream_batch()
    a, b = streams.open(), streams.open()
    a.put_text([1, 2])
    b.put_text([3])
    with pytest.raises(ValueError, match="sliding-window"):
        streams.step()
    with pytest.raises(ValueError, match="evict='window' needs full-attention caches"):
        model.stream(max_cache_tokens=8, evict="window")
