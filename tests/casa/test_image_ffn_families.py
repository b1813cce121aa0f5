"""`image_ffn` across block layouts: sequential pre-norm blocks, parallel attention/MLP blocks (GPT-J, CodeGen,
Phi, Cohere, Falcon, GPT-NeoX), OPT-style fc1/fc2 pairs (OPT, XGLM, BioGPT), MoE feed-forwards (GraniteMoE).

The check is the block itself: with its attention output zeroed (a forward hook), a block maps its input x to
x + FFN(norm(x)) whatever its layout, so the frozen image FFN must give exactly the block's output."""

import pytest
import torch

import casa_adapter
from casa_adapter.casa.layer import CasaLayer
from casa_adapter.census.checks import CensusTower

FAMILIES = [
    "llama", "gpt2", "bloom", "mpt", "gemma2", "bamba", "apertus", "stablelm",
    "gpt_neox", "gptj", "codegen", "phi", "cohere", "falcon",
    "opt", "xglm", "biogpt", "granitemoe", "gemma3_text", "olmo2", "exaone4",
]  # fmt: skip


def _zero_output(module, args, output):
    return (torch.zeros_like(output[0]), *output[1:]) if isinstance(output, tuple) else torch.zeros_like(output)


def _residual_only(module, args, output):
    """Bloom's attention adds the residual (its second argument) itself: nothing but that residual."""
    return (args[1], *output[1:]) if isinstance(output, tuple) else args[1]


def _block_io(model, index: int, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Block `index`'s input and output hidden states (1, T, D) over a text-only forward, every attention zeroed."""
    spec, blocks = model.family, model.decoder_blocks()
    seen = {}
    silence = _residual_only if model.config.model_type == "bloom" else _zero_output
    attentions = [getattr(b, spec.attention, None) for b in blocks]  # hybrids: mixer blocks have none
    hooks = [a.register_forward_hook(silence) for a in attentions if a is not None]

    def grab_in(module, args, kwargs):
        seen["x"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    def grab_out(module, args, kwargs, output):
        seen["y"] = (output[0] if isinstance(output, tuple) else output).detach().clone()

    hooks += [blocks[index].register_forward_pre_hook(grab_in, with_kwargs=True)]
    hooks += [blocks[index].register_forward_hook(grab_out, with_kwargs=True)]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    return seen["x"], seen["y"]


@pytest.mark.parametrize("model_type", FAMILIES)
def test_frozen_image_ffn_is_the_blocks_own_ffn_step(model_type):
    from casa_adapter.census.tiny import tiny_base

    torch.manual_seed(0)
    model = casa_adapter.wrap(tiny_base(model_type), vision=CensusTower(), image_ffn="frozen").eval()
    index = model.layer_indices[-1]
    layer = next(m for m in model.decoder_blocks()[index].modules() if isinstance(m, CasaLayer))
    ids = torch.randint(3, 50, (1, 7))
    x, y = _block_io(model, index, ids)
    with torch.no_grad():
        got = layer.image_ffn(x.reshape(1, -1, x.shape[-1]))  # OPT's blocks see (B*T, D) rows
    assert torch.allclose(got.reshape(y.shape), y, atol=1e-5), (got.reshape(y.shape) - y).abs().max()
    assert (y - x).abs().max() > 1e-3  # the FFN step moved the tokens: the check is not vacuous


def test_post_norm_opt_blocks_are_refused():
    from casa_adapter.census.tiny import tiny_base

    llm = tiny_base("opt")
    for block in llm.model.decoder.layers:
        block.do_layer_norm_before = False
    with pytest.raises(casa_adapter.UnsupportedModelError, match="do_layer_norm_before=False"):
        casa_adapter.wrap(llm, vision=CensusTower(), image_ffn="frozen")
