"""The loader: mixture proportions, deterministic resume (one process, workers, DDP ranks, Lightning)."""

from __future__ import annotations

import io
import itertools
import os

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch.callbacks import ModelCheckpoint

from casa_adapter.data.check import to_tensor
from casa_adapter.data.datamodule import CasaDataModule, DataCountsLogger
from casa_adapter.data.dataset import BatchStream
from casa_adapter.data.fixtures import write_good_shards
from casa_adapter.data.loader import BatchLoader
from casa_adapter.data.settings import DataSettings
from casa_adapter.data.shards import SourceIndex
from casa_adapter.data.sources import Source
from casa_adapter.processor import Processor

from tiny_tokenizers import tiny_chat_tokenizer

EPOCH = 6


def make_processor() -> Processor:
    tok = tiny_chat_tokenizer()
    return Processor(tok, image_token_id=len(tok), image_transform=to_tensor)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("data")
    write_good_shards(str(root / "a"), 60, maxcount=8, prefix="a")
    write_good_shards(str(root / "b"), 25, maxcount=8, prefix="b")
    return str(root)


def settings(**overrides) -> DataSettings:
    return DataSettings(
        **{"image_tokens": 4, "max_tokens": 120, "batch_size": 2, "num_workers": 0, "shuffle_buffer": 5, **overrides}
    )


def train_loader(root: str, s: DataSettings, rank: int = 0, world: int = 1) -> BatchLoader:
    sources = [Source(os.path.join(root, "a"), 2.0, "a"), Source(os.path.join(root, "b"), 1.0, "b")]
    indexes = [SourceIndex.build(src) for src in sources]
    stream = BatchStream(indexes, [src.weight for src in sources], make_processor(), s, True, rank, world)
    return BatchLoader(stream, epoch_batches=EPOCH)


def run(loader: BatchLoader, n: int) -> list[dict]:
    """n batches, across Lightning epochs, as a trainer would read them."""
    out: list[dict] = []
    while len(out) < n:
        out += list(itertools.islice(iter(loader), n - len(out)))
    return out


def same(a: dict, b: dict) -> bool:
    tensors = all(torch.equal(a[k], b[k]) for k in a if k != "images")
    return tensors and all(torch.equal(x, y) for x, y in zip(a["images"], b["images"]))


def roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)


def test_mixture_proportions_at_the_loader(data) -> None:
    loader = train_loader(data, settings(batch_size=8, max_tokens=400))
    run(loader, 55)
    sources = loader.counter.sources
    total = sources["a"] + sources["b"]
    assert total > 2000 and abs(sources["a"] / total - 2 / 3) < 0.03, sources


@pytest.mark.parametrize("workers, stop", [(0, 4), (2, 3), (2, 8)])
def test_resume_sees_exactly_the_uninterrupted_batches(data, workers, stop) -> None:
    s = settings(num_workers=workers)
    reference = run(train_loader(data, s), 14)
    first = train_loader(data, s)
    seen = run(first, stop)
    resumed = train_loader(data, s)
    resumed.load_state_dict(roundtrip(first.state_dict()))
    seen += run(resumed, 14 - stop)
    assert all(same(a, b) for a, b in zip(seen, reference)) and len(seen) == 14
    assert resumed.counter.good == sum(int(b["sample_ids"].amax(1).sum()) for b in reference)


def test_simulated_ranks_resume_and_differ(data) -> None:
    s = settings(num_workers=2)
    per_rank = []
    for rank in range(2):
        reference = run(train_loader(data, s, rank, 2), 9)
        first = train_loader(data, s, rank, 2)
        seen = run(first, 5)
        resumed = train_loader(data, s, rank, 2)
        resumed.load_state_dict(roundtrip(first.state_dict()))
        seen += run(resumed, 4)
        assert all(same(a, b) for a, b in zip(seen, reference))
        per_rank.append(reference)
    assert not same(per_rank[0][0], per_rank[1][0])


def test_resume_refuses_another_layout(data) -> None:
    state = train_loader(data, settings(num_workers=2)).state_dict()
    with pytest.raises(ValueError, match="num_workers"):
        train_loader(data, settings(num_workers=0)).load_state_dict(state)
    with pytest.raises(ValueError, match="world size"):
        train_loader(data, settings(num_workers=2), rank=0, world=2).load_state_dict(state)


def _ddp_rank(rank: int, root: str, init: str, results: dict) -> None:
    torch.set_num_threads(1)  # a forked process: keep OpenMP out of it
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    s = settings()
    reference = run(train_loader(root, s, rank, 2), 7)
    first = train_loader(root, s, rank, 2)
    seen = run(first, 3)
    state = roundtrip(first.state_dict())  # gathers both ranks' positions
    resumed = train_loader(root, s, rank, 2)
    resumed.load_state_dict(state)
    seen += run(resumed, 4)
    results[rank] = (sorted(state["ranks"]), all(same(a, b) for a, b in zip(seen, reference)))
    dist.destroy_process_group()


def test_ddp_state_holds_every_rank_and_resumes(data, tmp_path) -> None:
    results = mp.Manager().dict()
    mp.start_processes(_ddp_rank, args=(data, f"file://{tmp_path}/store", results), nprocs=2, start_method="fork")
    assert dict(results) == {0: ([0, 1], True), 1: ([0, 1], True)}


class Recorder(L.LightningModule):
    """Records each training batch's input_ids; trains one dummy weight."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["input_ids"].clone())
        return (self.w - batch["input_ids"].float().mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(
    data: str, tmp_path, max_steps: int, ckpt: str | None = None, every: int | None = None, train: list | None = None
) -> Recorder:
    """A Lightning fit over `train` (default: the sources a (weight 2) and b under `data`)."""
    module = Recorder()
    datamodule = CasaDataModule(
        train=train
        or [{"shards": os.path.join(data, "a"), "weight": 2}, {"shards": os.path.join(data, "b"), "weight": 1}],
        settings=settings(num_workers=2, batches_per_epoch=EPOCH),
        processor=make_processor(),
    )
    callbacks = [DataCountsLogger(every_n_steps=1)]
    if every:
        callbacks.append(ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every, save_top_k=-1))
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        enable_checkpointing=bool(every),
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    assert trainer.callback_metrics["data/train/good"] == datamodule.counts()["train/good"] > 0
    assert trainer.callback_metrics["data/samples_per_s"] > 0  # on the progress bar
    return module


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader`", "ignore:The dirpath has changed")
def test_lightning_mid_epoch_resume(data, tmp_path) -> None:
    full = _fit(data, tmp_path / "full", max_steps=15).seen
    _fit(data, tmp_path / "ckpt", max_steps=8, every=8)
    ckpt = next(p for p in os.listdir(tmp_path / "ckpt") if "step=8" in p)
    resumed = _fit(data, tmp_path / "resume", max_steps=15, ckpt=str(tmp_path / "ckpt" / ckpt), every=8).seen
    assert len(resumed) == 7 and all(torch.equal(a, b) for a, b in zip(resumed, full[8:]))


class Validator(L.LightningModule):
    """Exposes `processor` and `image_tokens` as the data module expects; counts validation samples."""

    def __init__(self) -> None:
        super().__init__()
        self.processor, self.image_tokens, self.samples = make_processor(), 4, 0

    def validation_step(self, batch, batch_idx):
        self.samples += int(batch["sample_ids"].amax(1).sum())


def test_datamodule_takes_the_processor_from_the_module_and_validates_everything(data, tmp_path) -> None:
    module = Validator()
    datamodule = CasaDataModule(
        train=os.path.join(data, "a"),
        val=[os.path.join(data, "a"), os.path.join(data, "b")],
        settings=DataSettings(max_tokens=120, batch_size=2, num_workers=2),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.validate(module, datamodule=datamodule)
    assert module.samples == 60 + 25 and datamodule.settings.image_tokens == 4
    assert datamodule.counts()["val/good"] == 85 and "train/good" not in datamodule.counts()
