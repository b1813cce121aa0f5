"""The token-insertion baseline: exact text-only logits, one logits row per input position, loss and logits
equal to a hand-built inputs_embeds forward, generate, trainable set, adapters."""

import json

import pytest
import torch

import casa_adapter
from casa_adapter.adapters.manifest import MANIFEST
from casa_adapter.fusion.insertion import InsertionModel

from conftest import greedy_by_full_forward, randomize_new_params, tiny_llm, tiny_tower

LORA = casa_adapter.LoraSettings(rank=4)


def inserted(family="llama", **kw):
    model = casa_adapter.wrap(tiny_llm(family), vision=tiny_tower(), fusion="insertion", lora=LORA, **kw)
    randomize_new_params(model)
    return model


def batch(model, T=10):
    """Row 0: one image at 3. Row 1: one image at 3 and two at one point (6, 7): rows grow to different lengths."""
    torch.manual_seed(0)
    ids = torch.randint(1, 90, (2, T))
    ids[:, 3] = model.image_token_id
    ids[1, 6] = ids[1, 7] = model.image_token_id
    return ids, [torch.rand(1, 3, 16, 16), torch.rand(3, 3, 16, 16)]


def hand_built(model, ids, images, labels):
    """One row at a time: markers replaced by image tokens by hand, image tokens labelled -100."""
    features = model.encode_images(images)
    embed = model.llm.get_input_embeddings()
    rows = []
    for b in range(ids.shape[0]):
        parts, labs, k = [], [], 0
        for t in range(ids.shape[1]):
            if ids[b, t] == model.image_token_id:
                parts.append(features[b][k])  # (N, D)
                labs.append(torch.full((features[b][k].shape[0],), -100))
                k += 1
            else:
                parts.append(embed(ids[b, t : t + 1]))
                labs.append(labels[b, t : t + 1])
        rows.append((torch.cat(parts)[None], torch.cat(labs)[None]))  # (1, L, D), (1, L)
    return rows


def test_wrap_builds_insertion_without_casa_layers():
    model = inserted()
    assert isinstance(model, InsertionModel)
    assert not any("Casa" in type(m).__name__ or "Marker" in type(m).__name__ for m in model.llm.modules())
    assert model.image_token_id == 96  # one past the embedding table, as under CASA
    assert set(model.trainable_groups()) == {"lora", "projector", "vision"}
    with pytest.raises(ValueError, match="already wrapped for token insertion"):
        casa_adapter.wrap(model.llm, vision=tiny_tower())


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text", "gpt2"])
def test_text_only_logits_equal_base_exactly(family):
    ids = torch.randint(1, 90, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    base = tiny_llm(family)(ids, attention_mask=mask).logits
    model = casa_adapter.wrap(tiny_llm(family), vision=tiny_tower(), fusion="insertion", lora=LORA)
    assert torch.equal(model(ids, attention_mask=mask).logits, base)


@pytest.mark.parametrize("family", ["llama", "qwen3", "phi3", "gpt2"])
def test_logits_per_position_and_loss_equal_hand_built(family):
    model = inserted(family)
    ids, images = batch(model)
    labels = ids.masked_fill(ids == model.image_token_id, -100)
    out = model(ids, images=images, labels=labels)
    assert out.logits.shape == (2, ids.shape[1], model.config.vocab_size)
    N = 16
    for b, (embeds, labs) in enumerate(hand_built(model, ids, images, labels)):
        ref = model.llm(inputs_embeds=embeds, labels=labs)
        row = model(ids[b : b + 1], images=images[b : b + 1], labels=labels[b : b + 1])
        assert torch.allclose(row.loss, ref.loss, atol=1e-6)
        slots = torch.where(ids[b] == model.image_token_id, N, 1).cumsum(0) - 1  # (T,) slot of each position
        assert torch.allclose(out.logits[b], ref.logits[0, slots], atol=1e-5)  # padded batch = rows alone
    rows = hand_built(model, ids, images, labels)
    flat = torch.cat([lab[0, 1:] for _, lab in rows])
    nll = torch.cat(
        [
            torch.nn.functional.cross_entropy(model.llm(inputs_embeds=e).logits[0, :-1], lab[0, 1:], reduction="none")
            for e, lab in rows
        ]
    )
    assert torch.allclose(out.loss, nll[flat != -100].mean(), atol=1e-6)  # batch loss: same pairs as the rows


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_generate_equals_greedy_full_forward(family):
    model = inserted(family)
    ids, images = batch(model)
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), images=images, max_new_tokens=5, do_sample=False, eos_token_id=None
    )
    assert torch.equal(out, greedy_by_full_forward(model, ids, images, 5))


def test_right_padded_row_matches_the_row_alone():
    model = inserted()
    ids, images = batch(model)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    padded = model(ids, attention_mask=mask, images=images).logits
    alone = model(ids[:1, :-2], images=images[:1]).logits
    assert torch.allclose(padded[0, :-2], alone[0], atol=1e-5)


def test_logits_to_keep_selects_input_positions():
    """What CasaModule asks for (logits only where labels are) is the same rows of the full logits."""
    model = inserted()
    ids, images = batch(model)
    full = model(ids, images=images).logits  # (B, T, V)
    keep = torch.tensor([1, 2, 6])
    assert torch.allclose(model(ids, images=images, logits_to_keep=keep).logits, full[:, keep], atol=1e-6)
    assert torch.allclose(model(ids, images=images, logits_to_keep=3).logits, full[:, -3:], atol=1e-6)
    with pytest.raises(ValueError, match="1D tensor"):
        model(ids, images=images, logits_to_keep=torch.ones_like(ids, dtype=torch.bool))


def test_image_count_mismatch_is_clear():
    model = inserted()
    ids, images = batch(model)
    with pytest.raises(ValueError, match="3 image markers but 1 images"):
        model(ids, images=[images[0], images[0]])


def test_one_step_changes_only_trainables():
    model = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), fusion="insertion", lora=LORA)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids, images = batch(model)
    for _ in range(2):  # LoRA B starts at zero: A moves from the second step on
        model(ids, images=images, labels=ids.masked_fill(ids == model.image_token_id, -100)).loss.backward()
        opt.step()
        opt.zero_grad()
    trainable = set(model.trainable_parameter_names())
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != (name in trainable), name
    assert model.trainable_counts()["projector"] == sum(p.numel() for p in model.vision.projector.parameters())


def test_save_load_identical_logits(tmp_path):
    model = inserted("qwen2")
    ids, images = batch(model)
    want = model(ids, images=images).logits
    model.save_adapter(tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert manifest["casa"]["fusion"] == "insertion" and manifest["casa"]["layer_indices"] == []
    assert manifest["trainable"]["counts"] == model.trainable_counts()
    loaded = casa_adapter.load_adapter(tmp_path / "a", tiny_llm("qwen2"), vision=tiny_tower())
    assert isinstance(loaded, InsertionModel)
    assert torch.equal(loaded(ids, images=images).logits, want)
    assert loaded.trainable_parameter_names() == model.trainable_parameter_names()


def test_packed_rows_match_separate_samples():
    """Two samples packed in one row (plus padding) give each sample's own logits: no attention across them."""
    model = inserted()
    ids, images = batch(model)
    a, b = ids[0, :6], ids[1, :9]  # a: one image; b: one image, then two at one point
    row = torch.cat([a, b, torch.zeros(3, dtype=torch.long)])[None]  # (1, 18)
    sample_ids = torch.tensor([[1] * 6 + [2] * 9 + [0] * 3])
    positions = torch.cat([torch.arange(6), torch.arange(9), torch.zeros(3, dtype=torch.long)])[None]
    packed = model(
        row,
        attention_mask=(sample_ids > 0).long(),
        images=[torch.cat([images[0], images[1]])],
        sample_ids=sample_ids,
        position_ids=positions,
    ).logits[0]
    alone_a = model(a[None], images=images[:1]).logits[0]
    alone_b = model(b[None], images=images[1:]).logits[0]
    assert torch.allclose(packed[:6], alone_a, atol=1e-5)
    assert torch.allclose(packed[6:15], alone_b, atol=1e-5)
