"""Score modifiers in wrapped models: Bloom, MPT and Falcon (alibi=True) ALiBi, Gemma 2 softcapping + sliding
layers, Mistral and Qwen2 with a small sliding window (4, shorter than the windows' text), gpt-oss's attention
sinks (+ sliding layers).

With CASA weights moved off zero, every CPU kernel, run on the q/k/v and layout a CASA layer hands its kernel,
equals a per-query loop that applies the rule with the family's *own* ALiBi tensor (its `build_alibi_tensor`
/ `build_mpt_alibi_tensor`), cap and window from the config; the modifiers change the model's logits; a
streaming session and cached `generate` equal full forwards."""

import math
import sys
import types
from types import SimpleNamespace

import pytest
import torch
import transformers as tf
from test_score_mods import loop_reference
from transformers import AutoModelForCausalLM

import casa_adapter
from casa_adapter.backbone.access import AttentionAccess
from casa_adapter.backbone.families import attention_blocks, decoder_blocks, family_spec, get_path
from casa_adapter.backbone.score_mods import family_score_mods
from casa_adapter.backbone.spec import UnsupportedModelError
from casa_adapter.casa.kernels import KERNELS
from casa_adapter.casa.kernels.flex import flex_available
from casa_adapter.casa.layer import CasaLayer
from casa_adapter.census.checks import CensusTower
from casa_adapter.census.report import causal_lm_types
from casa_adapter.census.scope import OUT_OF_SCOPE
from casa_adapter.census.tiny import VOCAB, tiny_config

from conftest import randomize_new_params

FAMILY_SETTINGS = {
    "bloom": ("bloom", {}),
    "mpt": ("mpt", {}),
    "falcon-alibi": ("falcon", dict(alibi=True)),
    "gemma2": ("gemma2", dict(sliding_window=4, attn_logit_softcapping=1.0)),  # a cap that bites on tiny scores
    "mistral": ("mistral", dict(sliding_window=4)),
    "gpt_oss": ("gpt_oss", dict(sliding_window=4)),  # attention sinks, sliding layers
}
FAMILIES = [*FAMILY_SETTINGS, "qwen2"]
CPU_KERNELS = ["reference", "sdpa", "windowed"] + (["flex"] if flex_available() else [])


def family_llm(name: str):
    """A tiny random base of the family with the modifiers under test switched on."""
    if name == "qwen2":  # layer_types are made at init: sliding from layer 2 on
        cfg = tf.Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2,
                             use_sliding_window=True, sliding_window=4, max_window_layers=2)  # fmt: skip
    else:
        model_type, extra = FAMILY_SETTINGS[name]
        cfg = tiny_config(model_type)
        for key, value in extra.items():
            setattr(cfg, key, value)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def expected_rule(llm, layer: int, length: int) -> dict:
    """The family's own modifiers for block `layer`: bias(h, index(k), index(q)) from the ALiBi tensor the
    family builds for `length` positions, the config's cap, the window where the layer slides."""
    cfg = llm.config
    module = sys.modules[type(llm).__module__]
    H = cfg.num_attention_heads if hasattr(cfg, "num_attention_heads") else cfg.n_heads
    table = None
    if cfg.model_type == "bloom" or (cfg.model_type == "falcon" and cfg.alibi):
        table = module.build_alibi_tensor(torch.ones(1, length, dtype=torch.long), H, torch.float32).view(H, length)
        table = table / (math.sqrt(cfg.hidden_size // H) if cfg.model_type == "falcon" else 1.0)
    elif cfg.model_type == "mpt":
        table = module.build_mpt_alibi_tensor(H, length).view(H, length)  # slope * (j - (L - 1))
    window = getattr(cfg, "sliding_window", None)
    types_ = getattr(cfg, "layer_types", None)
    if types_ is not None and types_[layer] != "sliding_attention":
        window = None
    block = decoder_blocks(llm, family_spec(llm))[layer]
    sinks = next((p for n, p in block.named_parameters() if n.endswith(".sinks")), None)  # gpt-oss: (H,)
    return dict(
        bias=None if table is None else (lambda h, kj, qi: table[h, kj] - table[h, qi]),
        softcap=getattr(cfg, "attn_logit_softcapping", None),
        window=window,
        sinks=None if sinks is None else sinks.detach().tolist(),
    )


def prompt(model):
    """(1, 20) ids: 2 text tokens, an image, 8 text tokens, an image, 8 text tokens; and its two images."""
    ids = torch.randint(1, VOCAB - 6, (1, 20), generator=torch.Generator().manual_seed(0))
    ids[0, 2] = ids[0, 11] = model.image_token_id
    return ids, [torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))]


def wrapped(name: str, kernel: str = "auto"):
    model = casa_adapter.wrap(family_llm(name), vision=CensusTower(), kernel=kernel)
    randomize_new_params(model)
    return model


@pytest.mark.parametrize("name", FAMILIES)
def test_every_kernel_equals_the_rule_with_the_family_modifiers(name, monkeypatch):
    model = wrapped(name, kernel="reference")
    ids, images = prompt(model)
    calls, real = [], dict(KERNELS)
    monkeypatch.setitem(KERNELS, "reference", lambda *a: calls.append(a) or real["reference"](*a))
    with torch.no_grad():
        logits = model(ids, images=images).logits  # (1, 20, V)
    assert len(calls) == len(model.layer_indices)
    changed = 0.0
    for layer, (q, k, v, layout, scaling, mods) in zip(model.layer_indices, calls):
        images_at = layout.k_index[0, :32]  # 2 x 16 image keys first, each at its window's start (its marker)
        assert images_at.tolist() == [2] * 16 + [11] * 16
        rule = expected_rule(model.llm, layer, length=ids.shape[1])
        want = loop_reference(q, k, v, layout, scaling, **rule)
        for kernel in CPU_KERNELS:
            got = real[kernel](q, k, v, layout, scaling, mods)
            assert torch.allclose(got, want, atol=1e-5), (kernel, layer, (got - want).abs().max())
        changed = max(changed, float((want - loop_reference(q, k, v, layout, scaling)).abs().max()))
    assert changed > 1e-3  # the family's modifiers matter in at least one layer
    for layer in model.modules():
        if isinstance(layer, CasaLayer):
            layer.mods = None
    with torch.no_grad():
        plain = model(ids, images=images).logits
    # before the image: the same up to rounding (gpt-oss's experts batch their tokens per expert, so other tokens'
    # routing moves the early ones' sums by ~1e-8); after it: the modifiers matter
    assert torch.allclose(plain[0, :2], logits[0, :2], atol=1e-6) and (plain[0, 2:] - logits[0, 2:]).abs().max() > 1e-4


@pytest.mark.parametrize("name", FAMILIES)
def test_streaming_and_generate_equal_full_forwards(name):
    """Pieces that continue a window over cached keys whose window start has slid out; decode steps after."""
    model = wrapped(name)
    ids, images = prompt(model)
    with torch.no_grad():
        full = model(ids, images=images).logits[0]  # (20, V)
    session = model.stream()
    frames = images[0]
    pieces = [(None, slice(0, 2)), (frames[0], slice(3, 6)), (None, slice(6, 7)), (None, slice(7, 11))]
    pieces.append((frames[1], slice(12, 20)))  # one-token pieces are decode steps (auto: the sdpa kernel)
    for frame, span in pieces:
        if frame is not None:
            session.add_image(frame)
        got = session.add_text(ids[0, span])
        assert torch.allclose(got[0], full[span], atol=1e-5), (span, (got[0] - full[span]).abs().max())
    new = session.generate(max_new_tokens=4)
    seq = ids
    with torch.no_grad():
        for _ in range(4):
            seq = torch.cat([seq, model(seq, images=images).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(new[0], seq[0, -4:])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), images=images, max_new_tokens=4, do_sample=False)
    assert torch.equal(out[0, -4:], seq[0, -4:])


@pytest.mark.parametrize("name", ["gemma2", "mistral", "qwen2"])
def test_read_windows_are_the_masks_self_attention_gets(name):
    """The sliding window each CASA layer reads equals the one in the mask the family hands that block's
    self-attention (eager attention: a materialised (B, 1, T, T) mask; its last row's visible key count)."""
    llm = family_llm(name)
    llm.config._attn_implementation = "eager"
    T, seen = 12, {}
    for i, block in enumerate(llm.model.layers):
        hook = lambda mod, args, kwargs, i=i: seen.update({i: kwargs["attention_mask"]}) and None
        block.self_attn.register_forward_pre_hook(hook, with_kwargs=True)
    with torch.no_grad():
        llm(torch.arange(1, T + 1)[None])
    visible = {
        i: int((m[0, 0, -1] == 0).sum() if m.is_floating_point() else m[0, 0, -1].sum()) for i, m in seen.items()
    }
    model = casa_adapter.wrap(llm, vision=CensusTower())
    read = [m.mods.sliding_window if m.mods else None for m in model.modules() if isinstance(m, CasaLayer)]
    assert read == [n if n < T else None for n in visible.values()] and any(read)


def test_reader_follows_what_the_family_applies():
    """Gemma 3 keeps `attn_logit_softcapping` but never passes it to its attention: no cap. Gemma 2's full layers
    and Qwen2's layers below max_window_layers do not slide. Falcon without alibi has no ALiBi."""
    cfg = tiny_config("gemma3_text")
    cfg.attn_logit_softcapping, cfg.sliding_window = 30.0, 4
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(cfg).eval()
    model = casa_adapter.wrap(llm, vision=CensusTower())
    mods = {i: layer.mods for i, layer in enumerate(m for m in model.modules() if isinstance(m, CasaLayer))}
    assert all(m is None or m.softcap is None for m in mods.values())
    assert [m is not None and m.sliding_window == 4 for m in mods.values()] == [
        t == "sliding_attention" for t in cfg.layer_types
    ]
    torch.manual_seed(0)
    falcon = casa_adapter.wrap(AutoModelForCausalLM.from_config(tiny_config("falcon")), vision=CensusTower())
    assert all(m.mods is None for m in falcon.modules() if isinstance(m, CasaLayer))


def test_an_alibi_family_not_in_the_table_is_refused():
    module = types.ModuleType("transformers.models.newlm.modeling_newlm")
    module.build_alibi_tensor = lambda *a: None
    attn = type("NewAttention", (torch.nn.Module,), {"__module__": module.__name__})()
    sys.modules[module.__name__] = module
    try:
        access = SimpleNamespace(
            attn=attn, model_type="newlm", config=SimpleNamespace(), num_heads=4, has_self_attention=True
        )
        with pytest.raises(UnsupportedModelError, match="'newlm'.*ALiBi"):
            family_score_mods(access, 0)
    finally:
        del sys.modules[module.__name__]


def test_modifier_masks_are_made_once_per_forward(monkeypatch):
    """All CASA layers with equal modifiers (Bloom: every layer) share one set of bucket masks per forward."""
    import casa_adapter.casa.kernels.windowed as windowed

    model = wrapped("bloom", kernel="windowed")
    ids, images = prompt(model)
    made, build = [], windowed._modded_masks
    monkeypatch.setattr(windowed, "_modded_masks", lambda *a: made.append(a[1]) or build(*a))
    with torch.no_grad():
        model(ids, images=images)
        assert len(made) == 1 and len(model.layer_indices) == 4
        model(ids, images=images)
    assert len(made) == 2  # a new forward, a new layout


def _sliding_case(model_type: str):
    """A tiny base of `model_type` with sliding_window=4 and eager attention, or None where its config has no
    `sliding_window` or the base does not build (those are the census's business)."""
    try:
        cfg = tiny_config(model_type)
        text = cfg.get_text_config()
        if not hasattr(text, "sliding_window"):
            return None
        text.sliding_window, cfg._attn_implementation, text._attn_implementation = 4, "eager", "eager"
        torch.manual_seed(0)
        llm = AutoModelForCausalLM.from_config(cfg).eval()
        spec = family_spec(llm)
        blocks = decoder_blocks(llm, spec)
        return llm, spec, {i: get_path(blocks[i], spec.attention) for i in attention_blocks(llm, spec)}
    except Exception:
        return None


@pytest.mark.slow
def test_every_sliding_family_reads_the_window_its_masks_have():
    """Over every causal-LM type whose config has `sliding_window` (about 50): the window each block's CASA layer
    would read equals the one in the eager mask that block's self-attention gets."""
    checked, wrong = [], []
    for model_type in (t for t in causal_lm_types() if t not in OUT_OF_SCOPE):
        case = _sliding_case(model_type)
        if case is None:
            continue
        llm, spec, attns = case
        masks = {}
        for i, attn in attns.items():
            hook = lambda m, a, kw, i=i, masks=masks: masks.update({i: kw.get("attention_mask")})
            attn.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                llm(torch.arange(1, 13)[None])
        except Exception:
            continue
        try:
            read = {i: family_score_mods(AttentionAccess(a, spec, llm.config, model_type), i) for i, a in attns.items()}
        except UnsupportedModelError:  # wrap() refuses this type
            continue
        for i, mods in read.items():
            row = masks[i][0, 0, -1]  # (12,) the last query's row
            visible = int((row == 0).sum() if row.is_floating_point() else row.sum())
            if mods.sliding_window != (visible if visible < 12 else None):
                wrong.append((model_type, i))
        checked.append(model_type)
    assert len(checked) > 30 and not wrong, wrong
