"""Packed rows (several samples in one row, `sample_ids`) give the same logits and losses as one forward
per sample, in the CASA layers and in the LLM's own self-attention, for sdpa and eager attention."""

import pytest
import torch
import torch.nn.functional as F

import casa_adapter
from casa_adapter.backbone.compat import packed_llm_kwargs

from conftest import randomize_new_params, tiny_llm, tiny_tower


def samples(marker: int):
    """(input_ids, images) of three samples: two windows; no image; two images opening one window."""
    g = torch.Generator().manual_seed(7)
    text = lambda n: torch.randint(1, 90, (n,), generator=g)
    m = torch.tensor([marker])
    img = lambda n: torch.rand(n, 3, 16, 16, generator=g)
    return [
        (torch.cat([text(5), m, text(4), m, text(3)]), img(2)),
        (text(6), None),
        (torch.cat([text(2), m, m, text(5)]), img(2)),
    ]


def pack(rows, marker: int, pad: int = 0) -> dict:
    """Rows of samples -> the packed batch format of `casa_adapter.data.packing` (right padding)."""
    width = max(sum(len(ids) for ids, _ in row) for row in rows) + 2
    batch = {
        k: torch.zeros(len(rows), width, dtype=torch.long)
        for k in ("input_ids", "attention_mask", "position_ids", "sample_ids")
    }
    batch["input_ids"].fill_(pad)
    batch["labels"] = torch.full((len(rows), width), -100)
    for b, row in enumerate(rows):
        start = 0
        for k, (ids, _) in enumerate(row, start=1):
            end = start + len(ids)
            batch["input_ids"][b, start:end] = ids
            batch["attention_mask"][b, start:end] = 1
            batch["position_ids"][b, start:end] = torch.arange(len(ids))
            batch["sample_ids"][b, start:end] = k
            batch["labels"][b, start + 1 : end] = ids[1:].masked_fill(ids[1:] == marker, -100)  # no loss across samples
            start = end
    batch["images"] = [torch.cat([im for _, im in row if im is not None]) for row in rows]
    return batch


def make_model(family: str, attn: str, kernel: str):
    llm = tiny_llm(family)
    llm.config._attn_implementation = attn
    model = casa_adapter.wrap(llm, vision=tiny_tower(), init="copy", kernel=kernel)
    randomize_new_params(model)  # CASA contributes, so leaks in CASA would show
    return model


def separate(model, ids, images):
    """Logits (L, V) and loss of one sample alone."""
    labels = ids.masked_fill(ids == model.image_token_id, -100)[None]
    out = model(ids[None], images=None if images is None else [images], labels=labels)
    return out.logits[0], out.loss


def check_packed(model, out, rows):
    """Packed logits and per-sample losses equal the separate forwards; the row loss is their token-weighted mean."""
    total, count = 0.0, 0
    for b, row in enumerate(rows):
        start = 0
        for ids, images in row:
            end = start + len(ids)
            logits, loss = separate(model, ids, images)
            packed = out.logits[b, start:end]
            assert torch.allclose(packed, logits, atol=1e-5), (packed - logits).abs().max()
            target = ids[1:].masked_fill(ids[1:] == model.image_token_id, -100)
            packed_loss = F.cross_entropy(out.logits[b, start : end - 1], target)
            assert torch.allclose(packed_loss, loss, atol=1e-5)
            n = int((target != -100).sum())
            total, count, start = total + loss * n, count + n, end
    assert torch.allclose(out.loss, total / count, atol=1e-5)


@pytest.mark.parametrize("kernel", ["reference", "windowed"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt2"])
def test_packed_rows_equal_separate_forwards(family, attn, kernel):
    model = make_model(family, attn, kernel)
    s = samples(model.image_token_id)
    rows = [[s[0], s[1], s[2]], [s[1], s[2]]]
    batch = pack(rows, model.image_token_id)
    with torch.no_grad():
        out = model(
            batch["input_ids"],
            images=batch["images"],
            labels=batch["labels"],
            sample_ids=batch["sample_ids"],
            **packed_llm_kwargs(batch["sample_ids"], batch["position_ids"]),
        )
        check_packed(model, out, rows)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_as_collated_keeps_samples_apart(attn):
    """The collated batch as is (2D attention_mask, position_ids, sample_ids): CasaModel applies packed_llm_kwargs."""
    model = make_model("llama", attn, "windowed")
    s = samples(model.image_token_id)
    rows = [[s[0], s[1], s[2]]]
    batch = pack(rows, model.image_token_id)
    with torch.no_grad():
        check_packed(model, model(**batch), rows)


def test_packed_kwargs_derive_and_check_position_ids():
    sample_ids = torch.tensor([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    kw = packed_llm_kwargs(sample_ids)
    assert kw["attention_mask"] is None and kw["use_cache"] is False
    assert kw["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 0, 0], list(range(8))]
    merged = torch.arange(8).expand(2, 8)  # does not restart at samples 2 and 3 of row 0
    with pytest.raises(ValueError, match="restart at each packed sample"):
        packed_llm_kwargs(sample_ids, merged)
