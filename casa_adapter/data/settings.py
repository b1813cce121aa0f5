"""`DataSettings`: every knob of the data pipeline, as one documented dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field

from casa_adapter.data.decode import DecodeSettings
from casa_adapter.data.fetch import StreamSettings


@dataclass
class DataSettings(DecodeSettings):
    """Loading, packing, order and bad-data policy (plus the per-sample `DecodeSettings`)."""

    batch_size: int = 8
    """Rows per batch (with packing a row holds several samples, up to `max_tokens`)."""

    packing: bool = True
    """Pack samples into rows up to `max_tokens`; False: one sample a row, padded (`--no-packing`)."""

    seed: int = 0
    """Seed of every order and mixture draw; with it the stream of batches is reproducible."""

    shuffle_buffer: int | None = None
    """None: full shuffle of each epoch (random access); B > 0: WebDataset-style buffer of B samples
    over shuffled shards (near-sequential reads); 0: no shuffle."""

    num_workers: int = 2
    """DataLoader worker processes per rank; each is one slot of the deterministic order."""

    batches_per_epoch: int | None = None
    """Batches of one Lightning training epoch (the stream itself never ends; it continues across
    epochs). None: the training samples divided by (world size x batch_size)."""

    max_bad_fraction: float | None = None
    """Fail the run (`BadDataError`) when more than this fraction of the samples seen are bad.
    None: never fail, only count and log."""

    min_samples_before_failing: int = 200
    """Samples to see before `max_bad_fraction` is enforced (a fraction of few samples is noise)."""

    stream: StreamSettings = field(default_factory=StreamSettings)
    """How remote shards (`http(s)://`, `s3://`, `gs://`, `pipe:`) are fetched: retries, prefetch, cache."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0: {self}")
        if self.max_bad_fraction is not None and not 0 <= self.max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.shuffle_buffer is not None and self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be None or >= 0, got {self.shuffle_buffer}")
