"""Packing: rows under the token budget, the batch format, and unpacking back to the samples."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from casa_adapter.data.decode import Sample
from casa_adapter.data.packing import BATCH_KEYS, collate_rows, pack_rows, unpack_row
from casa_adapter.processor import IGNORE_INDEX

MARKER, PAD, IMAGE_TOKENS = 99, 0, 5


def random_sample(rng: random.Random, k: int) -> Sample:
    n_images = rng.randint(0, 3)
    ids = [rng.randint(1, 50) for _ in range(rng.randint(3, 20))]
    for _ in range(n_images):
        ids.insert(rng.randint(1, len(ids) - 1), MARKER)
    labels = [i if rng.random() < 0.4 and i != MARKER else IGNORE_INDEX for i in ids]
    labels[0] = IGNORE_INDEX
    images = torch.rand(n_images, 3, 4, 4) if n_images else None
    return Sample(torch.tensor(ids), torch.tensor(labels), images, "src", f"k{k}")


@pytest.fixture
def samples() -> list[Sample]:
    rng = random.Random(0)
    return [random_sample(rng, k) for k in range(60)]


def test_rows_respect_the_budget_and_keep_order(samples: list[Sample]) -> None:
    cost = lambda s: s.cost(IMAGE_TOKENS)
    rows = list(pack_rows(samples, cost, max_tokens=64))
    assert [s.key for row in rows for s in row] == [s.key for s in samples]
    assert all(sum(map(cost, row)) <= 64 for row in rows)
    assert any(len(row) > 1 for row in rows)
    # greedy: the next row's first sample would not have fitted
    assert all(sum(map(cost, a)) + cost(b[0]) > 64 for a, b in itertools.pairwise(rows))
    assert all(len(row) == 1 for row in pack_rows(samples, cost, 64, packing=False))


def test_packed_batch_unpacks_to_the_samples(samples: list[Sample]) -> None:
    rows = list(pack_rows(samples, lambda s: s.cost(IMAGE_TOKENS), max_tokens=64))
    batch = collate_rows(rows, PAD)
    assert set(batch) == set(BATCH_KEYS)
    B, T = batch["input_ids"].shape
    assert len(rows) == B and all(batch[k].shape == (B, T) for k in BATCH_KEYS if k != "images")
    for b, row in enumerate(rows):
        back = unpack_row(batch, b, MARKER)
        assert len(back) == len(row)
        for got, want in zip(back, row):
            assert torch.equal(got["input_ids"], want.input_ids) and torch.equal(got["labels"], want.labels)
            assert (got["images"] is None and want.images is None) or torch.equal(got["images"], want.images)
        lengths = [len(s.input_ids) for s in row]
        expected_pos = torch.cat([torch.arange(n) for n in lengths])
        assert torch.equal(batch["position_ids"][b, : sum(lengths)], expected_pos)
        expected_ids = torch.cat([torch.full((n,), k + 1) for k, n in enumerate(lengths)])
        assert torch.equal(batch["sample_ids"][b, : sum(lengths)], expected_ids)
        pad = batch["attention_mask"][b] == 0
        assert pad.sum() == T - sum(lengths)
        assert (batch["input_ids"][b][pad] == PAD).all() and (batch["labels"][b][pad] == IGNORE_INDEX).all()
        assert (batch["sample_ids"][b][pad] == 0).all()
        assert batch["images"][b].shape[0] == int((batch["input_ids"][b] == MARKER).sum())


def test_unpacked_batch_has_the_same_keys_one_sample_a_row(samples: list[Sample]) -> None:
    rows = list(pack_rows(samples[:6], lambda s: s.cost(IMAGE_TOKENS), 64, packing=False))
    batch = collate_rows(rows, PAD)
    assert set(batch) == set(BATCH_KEYS) and batch["input_ids"].shape[0] == 6
    assert int(batch["sample_ids"].max()) == 1
    assert torch.equal(batch["sample_ids"], batch["attention_mask"])


def test_rows_without_images() -> None:
    text = Sample(torch.tensor([1, 2, 3]), torch.tensor([IGNORE_INDEX, 2, 3]), None, "s", "t")
    assert collate_rows([[text]], PAD)["images"] is None
    pic = Sample(torch.tensor([1, MARKER, 3]), torch.tensor([IGNORE_INDEX] * 2 + [3]), torch.rand(1, 3, 4, 4), "s", "p")
    images = collate_rows([[text], [pic]], PAD)["images"]
    assert images[0].shape == (0, 3, 4, 4) and images[1].shape == (1, 3, 4, 4)
