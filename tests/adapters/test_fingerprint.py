"""The base fingerprint: deterministic, every tensor (scalars too), sampled so it stays cheap on large models,
the same on sharded weights, and the older full-byte scheme still verifiable."""

import time

import pytest
import torch
import torch.distributed as dist
from torch import nn

from casa_adapter.adapters.fingerprint import SAMPLES, SCHEME, fingerprint, full_fingerprint, matches

from conftest import tiny_llm


class Config:
    model_type = "toy"


class Toy(nn.Module):
    """A module with a config, a matrix and a 0-dim parameter (as apertus' activation has)."""

    def __init__(self, n: int = 4096):
        super().__init__()
        self.config = Config()
        self.weight = nn.Parameter(torch.arange(n, dtype=torch.float32).view(64, -1))
        self.scale = nn.Parameter(torch.tensor(0.5))


def test_deterministic_and_named_by_scheme():
    assert fingerprint(tiny_llm()) == fingerprint(tiny_llm())
    assert fingerprint(tiny_llm()).startswith(f"{SCHEME}:")
    assert fingerprint(tiny_llm()) != fingerprint(tiny_llm(seed=1))


def test_scalar_parameters_are_covered():
    toy = Toy()
    before = fingerprint(toy)
    with torch.no_grad():
        toy.scale.fill_(0.25)
    assert fingerprint(toy) != before
    assert full_fingerprint(toy) != full_fingerprint(Toy())  # the full scheme handles scalars too


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.to(torch.bfloat16),
        lambda m: m.register_buffer("extra", torch.zeros(1)),
        lambda m: setattr(m, "weight", nn.Parameter(m.weight.detach().reshape(32, -1).clone())),
        lambda m: m.weight.data.add_(1e-3 * torch.randn_like(m.weight)),  # what a fine-tune does
        lambda m: m.weight.data.view(-1)[-1].add_(1.0),  # the last element is always sampled
    ],
    ids=["dtype", "new-tensor", "shape", "every-element", "last-element"],
)
def test_what_changes_the_fingerprint(change):
    toy = Toy()
    before = fingerprint(toy)
    change(toy)
    assert fingerprint(toy) != before


def test_an_element_between_samples_is_not_seen():
    """The documented limit: only SAMPLES elements per tensor are read."""
    toy = Toy(n=64 * SAMPLES * 4)
    before = fingerprint(toy)
    with torch.no_grad():
        toy.weight.view(-1)[1].add_(1.0)  # positions 0 and 256 are sampled, 1 is not
    assert fingerprint(toy) == before and full_fingerprint(toy) != full_fingerprint(Toy(n=64 * SAMPLES * 4))


def test_a_billion_parameters_take_well_under_a_second():
    """Sixteen (8192, 8192) tensors, 1.07e9 float32 parameters (4 GiB reserved, never touched but sampled)."""
    big = nn.Module()
    big.config = Config()
    for i in range(16):
        big.register_parameter(f"w{i}", nn.Parameter(torch.empty(8192, 8192), requires_grad=False))
    start = time.perf_counter()
    fingerprint(big)
    assert time.perf_counter() - start < 0.5


def test_matches_reads_the_recorded_scheme():
    llm = tiny_llm()
    assert matches(llm, fingerprint(llm)) == (True, fingerprint(llm))
    assert matches(llm, full_fingerprint(llm)) == (True, full_fingerprint(llm))
    assert matches(tiny_llm(seed=3), full_fingerprint(llm))[0] is False


def test_sharded_weights_give_the_plain_fingerprint(tmp_path):
    """A one-process gloo group: every parameter a DTensor sharded on dim 0, as FSDP2 leaves them."""
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    llm = tiny_llm()
    expected = fingerprint(llm)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/init", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        for module in llm.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                sharded = distribute_tensor(p.detach(), mesh, [Shard(0)])
                module.register_parameter(name, nn.Parameter(sharded, requires_grad=False))
        assert type(next(llm.parameters())).__name__ == "DTensor"
        assert fingerprint(llm) == expected
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_weights_give_the_cpu_fingerprint():
    assert fingerprint(tiny_llm().cuda()) == fingerprint(tiny_llm())
