"""`CasaDataModule`: WebDataset sources -> resumable, packed training batches and validation batches.

    data = CasaDataModule(
        train=[{"shards": "data/llava/shard-{000000..000099}.tar", "weight": 3},
               {"shards": "data/demo/train", "weight": 1, "name": "demo"}],
        val="data/demo/val",
        settings=DataSettings(batch_size=8, max_tokens=1024, num_workers=2),
    )
    trainer.fit(module, datamodule=data)

The processor (tokenizer, image marker, the tower's image transform) and the tokens an image
costs come from the arguments, or else from the LightningModule at `setup`:
`lightning_module.processor`, and `lightning_module.image_tokens` or
`lightning_module.model.vision.num_tokens()`. Bad-sample counts: `counts()` (flat numbers,
for `log_dict`) or the `DataCountsLogger` callback.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import lightning as L

from casa_adapter.data.dataset import BatchStream
from casa_adapter.data.loader import BatchLoader
from casa_adapter.data.make_demo import DemoSettings, ensure_demo
from casa_adapter.data.settings import DataSettings
from casa_adapter.data.sources import as_sources
from casa_adapter.data.streaming import ShardList, open_source

_PROBE_CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}


class CasaDataModule(L.LightningDataModule):
    """Training mixture + validation sets as packed batches (format: `casa_adapter.data.packing`).

    Args:
        train: training sources: a shard spec, a list of specs, or `{shards, weight, name}` dicts
            (`sources.Source`); resampled by weight, endlessly, in a resumable order.
        val: validation sources (read once per validation run, in order), or None.
        settings: `DataSettings` (batch size, token budget, packing, workers, seed, bad-data policy).
        processor: a `casa_adapter.Processor`; None: the LightningModule's `processor`.
        demo: generate the `data make-demo` set with these settings on first use (`prepare_data`);
            `train` / `val` then default to its `train/` and `val/` folders.
    """

    def __init__(
        self,
        train: Any = None,
        val: Any = None,
        settings: DataSettings | None = None,
        processor: Any = None,
        demo: DemoSettings | None = None,
    ) -> None:
        super().__init__()
        self.demo = demo
        if demo is not None:  # generated in prepare_data; sources are resolved once the files exist
            self._specs = (train or str(Path(demo.out) / "train"), val or str(Path(demo.out) / "val"))
            self.train_sources, self.val_sources = [], []
        else:
            self.train_sources = as_sources(train) if train is not None else []
            self.val_sources = as_sources(val) if val is not None else []
        self.settings = settings or DataSettings()
        self.processor = processor
        self._train: BatchLoader | None = None
        self._val: BatchLoader | None = None

    def prepare_data(self) -> None:
        """Generate the demo dataset on first use (rank 0 of each node; a no-op when it is there)."""
        if self.demo is not None:
            ensure_demo(self.demo)

    def setup(self, stage: str | None = None) -> None:
        if self.demo is not None and not self.train_sources:
            self.train_sources, self.val_sources = as_sources(self._specs[0]), as_sources(self._specs[1])
        self._resolve_model_parts()
        self.processor(_PROBE_CHAT)  # fail now on a configuration error (e.g. no chat template)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        if self._train is None and self.train_sources and stage in (None, "fit"):
            self._train = self._loader(self.train_sources, True, rank, world)
        if self._val is None and self.val_sources and stage in (None, "fit", "validate"):
            self._val = self._loader(self.val_sources, False, rank, world)

    def _resolve_model_parts(self) -> None:
        module = self.trainer.lightning_module if self.trainer else None
        if self.processor is None:
            self.processor = getattr(module, "processor", None)
        if self.settings.image_tokens is None:
            tokens = getattr(module, "image_tokens", None)
            vision = getattr(getattr(module, "model", None), "vision", None)
            if tokens is None and hasattr(vision, "num_tokens"):
                tokens = vision.num_tokens()
            self.settings = dataclasses.replace(self.settings, image_tokens=tokens)
        if self.processor is None or self.settings.image_tokens is None:
            raise ValueError(
                "CasaDataModule needs a processor and settings.image_tokens, given or found on the "
                "LightningModule (`processor`, `image_tokens` or `model.vision.num_tokens()`)"
            )

    def _loader(self, sources: list, train: bool, rank: int, world: int) -> BatchLoader:
        indexes = [open_source(source) for source in sources]
        stream = BatchStream(indexes, [s.weight for s in sources], self.processor, self.settings, train, rank, world)
        if not train:
            return BatchLoader(stream)
        epoch = self.settings.batches_per_epoch
        streamed = [index.name for index in indexes if isinstance(index, ShardList)]
        if epoch is None and streamed:
            raise ValueError(f"streamed training sources {streamed} have no known size: set settings.batches_per_epoch")
        if epoch is None:
            epoch = max(1, sum(len(i.refs) for i in indexes) // (world * self.settings.batch_size))
        return BatchLoader(stream, epoch)

    def train_dataloader(self) -> BatchLoader:
        if self._train is None:
            raise ValueError("CasaDataModule has no training sources (train=...) or setup() was not called")
        return self._train

    def val_dataloader(self) -> BatchLoader | list:
        return self._val if self._val is not None else []

    def counts(self) -> dict[str, float]:
        """Good / bad / truncated / per-reason / per-source counts so far, as `train/...` and `val/...`."""
        out: dict[str, float] = {}
        for split, loader in (("train", self._train), ("val", self._val)):
            if loader is not None:
                out.update({f"{split}/{k}": v for k, v in loader.counter.as_dict().items()})
        return out


class DataCountsLogger(L.Callback):
    """Logs `CasaDataModule.counts()` as `data/...` every `every_n_steps` training steps, and on the
    progress bar `data/samples_per_s`: good training samples a second since the last log (a slow
    source shows there)."""

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = every_n_steps
        self._last: tuple[float, float] | None = None
        """(time, good training samples) at the last log."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        data = trainer.datamodule
        if isinstance(data, CasaDataModule) and trainer.global_step % self.every_n_steps == 0:
            counts = data.counts()
            now, good = time.perf_counter(), counts.get("train/good", 0.0)
            if self._last is not None and now > self._last[0]:
                rate = (good - self._last[1]) / (now - self._last[0])
                pl_module.log("data/samples_per_s", rate, on_step=True, prog_bar=True)
            self._last = (now, good)
            pl_module.log_dict({f"data/{k}": float(v) for k, v in counts.items()}, on_step=True)
