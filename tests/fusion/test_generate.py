"""generate() with images: cached decoding equals full forwards, and the cache keeps one window."""

import pytest
import torch

import casa_adapter

from conftest import greedy_by_full_forward, randomize_new_params, tiny_llm, tiny_tower


def prompt(model):
    torch.manual_seed(0)
    ids = torch.randint(1, 90, (2, 10))
    ids[:, 3] = model.image_token_id
    ids[1, 6] = ids[1, 7] = model.image_token_id  # row 1: a second window with two images
    return ids, [torch.rand(1, 3, 16, 16), torch.rand(3, 3, 16, 16)]


def check_generate(family: str, variant: str):
    model = casa_adapter.wrap(
        tiny_llm(family), vision=tiny_tower(), variant=variant, lora=casa_adapter.LoraSettings(rank=4)
    )
    randomize_new_params(model)
    ids, images = prompt(model)
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), images=images, max_new_tokens=5, do_sample=False, eos_token_id=None
    )
    assert torch.equal(out, greedy_by_full_forward(model, ids, images, 5))


def test_generate_equals_full_forward_greedy(family):
    check_generate(family, "casa")


@pytest.mark.parametrize("variant", ["ca", "shared"])
def test_generate_variants(variant):
    check_generate("qwen3", variant)


def test_generate_right_after_an_image():
    """Streaming captioning: the prompt ends with the marker, generation starts inside the new window."""
    model = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), init="copy")
    randomize_new_params(model)
    ids = torch.tensor([[5, 6, model.image_token_id]])
    images = [torch.rand(1, 3, 16, 16)]
    out = model.generate(ids, images=images, max_new_tokens=4, do_sample=False, eos_token_id=None)
    assert torch.equal(out, greedy_by_full_forward(model, ids, images, 4))
    other = model.generate(
        ids,
        images=[torch.rand(1, 3, 16, 16)],
        max_new_tokens=4,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
    )
    first = model(ids, images=images).logits[0, -1]
    assert not torch.allclose(other.scores[0][0], first, atol=1e-5)  # the first generated token sees the image


def test_cache_holds_only_the_current_window():
    model = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), every=1)
    ids, images = prompt(model)
    from casa_adapter.casa.cache import CasaCache

    inputs = model.casa_inputs(ids, images=images)
    cache = CasaCache(config=model.config, pending=inputs)
    model.llm(input_ids=ids, cache=cache, use_cache=True)
    layer = cache.casa_layers[0]
    # row 0: window 1 = 16 image tokens + 7 text tokens (positions 3..9); row 1: window 2 = 2 images + 4 text
    kept = (layer.windows > 0).sum(-1).tolist()
    assert kept == [16 + 7, 32 + 4]
    assert layer.windows[1][layer.windows[1] > 0].unique().tolist() == [2]
    text_kv = cache.layers[0].keys.shape[2]
    assert text_kv == ids.shape[1]  # the text KV cache holds text tokens only, never image tokens
