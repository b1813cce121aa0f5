"""Hybrid bases (mamba / delta-net / short-conv mixers beside attention) decoded together equal each session alone.

Their cache holds, beside the attention layers' KV slots, a recurrent state per row (convolution and SSM states)
that padding would move; `StreamBatch` feeds rows of different lengths in separate forwards for them
(`fusion/stream/recurrent.py`)."""

import pytest
import torch
from test_stream_batch import check_batched_equal_alone

import casa_adapter
from casa_adapter.census.checks import CensusTower
from casa_adapter.census.tiny import tiny_base
from casa_adapter.fusion.stream import ContinuationError, recurrent

from conftest import randomize_new_params

HYBRIDS = ["bamba", "lfm2_moe", "nemotron_h", "olmo_hybrid", "qwen3_next", "qwen3_5_text"]
"""Tiny hybrid bases that build (casa_adapter/census/tiny.py), one per mixer kind and cache layout (tiny LFM2 keeps
only attention blocks; LFM2-MoE has the short convolutions). Jamba continues one position per step: below."""


def hybrid(model_type: str, dtype: torch.dtype = torch.float32, fusion: str = "casa"):
    """CASA in the attention blocks (the default placement), with trained-looking nonzero weights."""
    llm = tiny_base(model_type).to(dtype)
    if dtype == torch.float64:
        for module in llm.modules():  # torch's grouped_mm (the MoE experts' default) has no float64
            if hasattr(getattr(module, "config", None), "_experts_implementation"):
                module.config._experts_implementation = "eager"
    model = casa_adapter.wrap(llm, vision=CensusTower(), fusion=fusion).to(dtype)
    randomize_new_params(model)
    return model


@pytest.fixture(params=[torch.float32, torch.float64], ids=["fp32", "fp64"])
def dtype(request):
    """fp32 (the tolerance the other families meet) and fp64 (batched equals alone to rounding: the method is exact)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(request.param)
    yield request.param
    torch.set_default_dtype(default)


@pytest.mark.parametrize("model_type, fusion", [(m, "casa") for m in HYBRIDS] + [("bamba", "insertion")])
def test_hybrid_sessions_batched_equal_sessions_alone(model_type, fusion, dtype):
    """Three sessions of different lengths, one joining late, one idle on a step, one closing early: each
    session's logits and generated tokens equal the same session run alone."""
    model = hybrid(model_type, dtype, fusion)
    atol = 1e-10 if dtype == torch.float64 else 1e-5
    assert recurrent.recurrent_layers(model.stream_batch().cache), "the tiny base should keep a recurrent state"
    check_batched_equal_alone(model, atol)


@pytest.mark.parametrize("model_type", ["bamba", "qwen3_next"])
def test_images_matter_and_reset_starts_a_fresh_state(model_type):
    """CASA's weights are live (another frame changes the logits), and a reset row's recurrent state is new."""
    model = hybrid(model_type)
    streams = model.stream_batch()
    a, b = streams.open(), streams.open()
    frames = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    for session, frame in ((a, frames[0]), (b, frames[1])):
        session.put_text([4, 5])
        session.put_image(frame)
        session.put_text([6, 7, 8])
    out = streams.step()
    assert (out[a] - out[b]).abs().max() > 1e-4  # same text, other frame
    assert b.state_bytes() > 0 and streams.state_bytes() >= a.state_bytes() + b.state_bytes()
    a.reset()
    a.put_text([9, 10, 11])
    b.put_text([12])
    got = streams.step()[a]
    assert torch.allclose(got, model.stream().add_text([9, 10, 11]), atol=1e-5)


def test_jamba_takes_one_position_per_step_after_the_first():
    """Jamba's mamba runs several positions from a zero SSM state, so a session takes a whole first step (here with
    an image), then one position per step, and more is refused; what it takes equals one full forward, batched."""
    model = hybrid("jamba")
    gen = torch.Generator().manual_seed(0)
    ids_a, ids_b = torch.randint(1, 90, (1, 9), generator=gen), torch.randint(1, 90, (1, 7), generator=gen)
    ids_a[0, 2] = model.image_token_id
    frame = torch.rand(3, 16, 16, generator=gen)
    full_a, full_b = model(ids_a, images=[frame[None]]).logits[0], model(ids_b).logits[0]  # (T, V)
    streams = model.stream_batch()
    a, b = streams.open(), streams.open()
    a.put_text(ids_a[0, :2])
    a.put_image(frame)
    a.put_text(ids_a[0, 3:5])
    b.put_text(ids_b[0, :3])
    out = streams.step()
    got_a, got_b = [out[a][0]], [out[b][0]]
    for k in range(4):
        a.put_text(ids_a[0, 5 + k : 6 + k])
        b.put_text(ids_b[0, 3 + k : 4 + k])
        out = streams.step()
        got_a.append(out[a][0])
        got_b.append(out[b][0])
    assert torch.allclose(torch.cat(got_a), full_a[[0, 1, *range(3, 9)]], atol=1e-5)
    assert torch.allclose(torch.cat(got_b), full_b, atol=1e-5)
    with pytest.raises(ContinuationError, match="jamba's JambaMambaMixer runs several positions from a zero SSM"):
        a.put_text([1, 2])
    assert a.queue == []
    a.reset()
    a.put_text([1, 2, 3])  # a new conversation: a first step again
