"""The trainable set by structure and count; one optimizer step leaves everything else bit-identical."""

import pytest
import torch

import casa_adapter
from casa_adapter.casa.layer import CasaLayer

from conftest import tiny_llm, tiny_tower


def expected_casa_count(model) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, CasaLayer) for p in m.parameters())


def test_trainable_groups_and_counts(family):
    model = casa_adapter.wrap(
        tiny_llm(family),
        vision=tiny_tower(),
        every=2,
        train_marker=True,
        lora=casa_adapter.LoraSettings(rank=4, targets=None),
    )
    names = set(model.trainable_parameter_names())
    params = dict(model.named_parameters())
    assert names == {n for n, p in params.items() if p.requires_grad}
    counts = model.trainable_counts()
    assert counts["casa"] == expected_casa_count(model) > 0
    assert counts["marker"] == model.config.hidden_size
    assert counts["projector"] == sum(p.numel() for p in model.vision.projector.parameters())
    assert counts["vision"] == 0
    # LoRA: every targeted linear gets A (r x in) and B (out x r); CASA and the LM head are never targets
    assert counts["lora"] > 0 and all("lora_" in n for n in model.trainable_groups()["lora"])
    assert not any(".casa." in n and "lora_" in n for n in names)
    assert not any(
        n.endswith(("lm_head.weight", "wte.weight", "embed_tokens.base.weight", "wte.base.weight")) for n in names
    )
    assert counts["total"] == sum(params[n].numel() for n in names)


def test_lora_targets_filter_and_count():
    llm = tiny_llm("llama")
    model = casa_adapter.wrap(
        llm, vision=tiny_tower(), lora=casa_adapter.LoraSettings(rank=2, targets=["q_proj", "v_proj"])
    )
    lora = model.trainable_groups()["lora"]
    blocks, hidden, q_out, kv_out = 3, 64, 64, 32
    assert len(lora) == blocks * 2 * 2  # q and v, A and B
    assert model.trainable_counts()["lora"] == blocks * (2 * (hidden + q_out) + 2 * (hidden + kv_out))
    with pytest.raises(ValueError, match="match no linear layer"):
        casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), lora=casa_adapter.LoraSettings(targets=["nope"]))


@pytest.mark.parametrize("model_type", ["nemotron_h", "bamba"])
def test_default_lora_skips_a_state_space_mixers_output_projection(model_type):
    """Mamba mixers' fused CUDA scan reads `out_proj.weight` directly: LoRA's default targets leave it out (peft
    refuses it for nemotron_h), and keep the mixer's `in_proj` and every attention projection."""
    from casa_adapter.census.tiny import tiny_base

    model = casa_adapter.wrap(tiny_base(model_type), vision=tiny_tower(), lora=casa_adapter.LoraSettings(rank=2))
    targets = model.lora_targets
    mixers = [n for n, m in model.llm.named_modules() if isinstance(getattr(m, "A_log", None), torch.nn.Parameter)]
    assert mixers and not any(t == f"{m}.out_proj" for m in mixers for t in targets)
    assert all(f"{m}.in_proj" in targets for m in mixers)
    assert any(t.endswith(("q_proj", "o_proj")) for t in targets)


def test_one_step_changes_only_trainables(family):
    lora = casa_adapter.LoraSettings(rank=4)
    model = casa_adapter.wrap(tiny_llm(family), vision=tiny_tower(), train_marker=True, lora=lora)
    model.train()
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    ids = torch.randint(1, 90, (2, 12))
    ids[:, 2] = model.image_token_id
    labels = ids.masked_fill(ids == model.image_token_id, -100)
    for _ in range(2):  # two steps: after the first, zero-initialised outputs let gradients reach q/k/v
        loss = model(ids, images=[torch.rand(1, 3, 16, 16)] * 2, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    params = dict(model.named_parameters())
    for n, before in frozen_before.items():
        assert torch.equal(params[n], before), n
    changed = [n for n, before in trainable_before.items() if not torch.equal(params[n], before)]
    groups = model.trainable_groups()
    for group in ("casa", "marker", "lora", "projector"):
        assert set(groups[group]) & set(changed), f"no {group} parameter moved"


def test_unfreeze_last_vision_blocks():
    model = casa_adapter.wrap(tiny_llm("llama"), vision="siglip-tiny", pretrained=False, unfreeze_last=1)
    vision = model.trainable_groups()["vision"]
    assert vision and all(n.startswith("vision.tower.") for n in vision)
    tower = dict(model.vision.tower.named_parameters())
    frozen_tower = [n for n, p in tower.items() if not p.requires_grad]
    assert frozen_tower  # earlier blocks stay frozen
    assert model.trainable_counts()["vision"] == sum(tower[n[len("vision.tower.") :]].numel() for n in vision)


def test_tied_embeddings_stay_tied_and_frozen():
    llm = tiny_llm("qwen2")
    assert llm.config.tie_word_embeddings
    model = casa_adapter.wrap(llm, vision=tiny_tower(), train_marker=True)
    emb = model.llm.get_input_embeddings()
    assert model.llm.get_output_embeddings().weight is emb.weight
    assert not emb.weight.requires_grad and emb.marker.requires_grad


def test_merge_lora_keeps_logits():
    model = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), lora=casa_adapter.LoraSettings(rank=4))
    with torch.no_grad():
        for n in model.trainable_groups()["lora"]:
            dict(model.named_parameters())[n].normal_(0, 0.05)
    ids = torch.randint(1, 90, (1, 10))
    ids[0, 2] = model.image_token_id
    images = [torch.rand(1, 3, 16, 16)]
    before = model(ids, images=images).logits
    assert model.merge_lora() == 3 * 7
    assert not model.trainable_groups()["lora"]
    assert torch.allclose(model(ids, images=images).logits, before, atol=1e-5)


def _lora_blocks(model) -> set[int]:
    """The decoder block indices holding LoRA targets (tiny Llama: `model.layers.I....`)."""
    return {int(name.split(".")[2]) for name in model.lora_targets}


def test_lora_blocks_from_casa_all_or_listed(tmp_path):
    """`LoraSettings.blocks`: `from_casa` adapts the blocks from the lowest CASA block up (all of them with token
    insertion), a list the blocks it names; the manifest keeps the choice, so a loaded adapter has the same."""
    wrap = lambda blocks, **casa: casa_adapter.wrap(
        tiny_llm("llama"), vision=tiny_tower(), lora=casa_adapter.LoraSettings(rank=2, blocks=blocks), **casa
    )
    assert _lora_blocks(wrap("all", layers=[2])) == {0, 1, 2}
    assert _lora_blocks(wrap("from_casa", layers=[2])) == {2}
    assert _lora_blocks(wrap("from_casa", layers=[1, 2])) == {1, 2}
    assert _lora_blocks(wrap("from_casa", fusion="insertion")) == {0, 1, 2}  # image tokens enter at block 0
    model = wrap([-1, 0], layers=[1])
    assert _lora_blocks(model) == {0, 2} and model.trainable_counts()["lora"] > 0
    model.save_adapter(tmp_path / "a")
    loaded = casa_adapter.load_adapter(tmp_path / "a", tiny_llm(), vision=tiny_tower())
    assert loaded.lora_targets == model.lora_targets
    with pytest.raises(ValueError, match=r"out of range for 3 decoder blocks"):
        wrap([3])
    with pytest.raises(ValueError, match="'all', 'from_casa' or a list"):
        casa_adapter.LoraSettings(blocks="top")
