"""Data pipeline: WebDataset samples, conversion, packing, collation and bad-sample accounting.

Where things are (docs/data.md tells the whole story):

- `sources` / `shards`: shard specs and weighted sources; tar (or folder) indexes, reads by sample;
- `chat` / `decode`: the sample format -> chat -> `Processor` -> `Sample`, with the length policy;
- `order` / `dataset` / `loader`: deterministic per-slot orders, worker streams, the resumable loader;
- `packing`: rows under a token budget and the batch format the model accepts;
- `counters`: bad-sample reasons and counts; `check`: the `data check` command;
- `convert` / `make_demo` (+ `demo_tasks`, `demo_render`): converters and the demo dataset;
- `datamodule`: `CasaDataModule`, the LightningDataModule the recipes name.

Names are imported lazily so that `casa-adapter data ...` does not pay for Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CasaDataModule": "datamodule",
    "DataCountsLogger": "datamodule",
    "DataSettings": "settings",
    "DecodeSettings": "decode",
    "Source": "sources",
    "BadSampleCounter": "counters",
    "BadDataError": "counters",
    "REASONS": "counters",
    "BatchLoader": "loader",
    "BatchStream": "dataset",
    "collate_rows": "packing",
    "pack_rows": "packing",
    "unpack_row": "packing",
    "DemoSettings": "make_demo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'casa_adapter.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"casa_adapter.data.{_EXPORTS[name]}"), name)
