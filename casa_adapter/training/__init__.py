"""Training: the LightningModule, its optimiser, callbacks, the FSDP2 plan and the LightningCLI.

- `module`: `CasaModule`, loss on answer tokens only, validation accuracy, trainable-only checkpoints;
- `optim`: `OptimSettings`, AdamW groups (new vs pretrained, decay vs not), warmup + decay;
- `callbacks`: adapter checkpoints, throughput and memory, atomic resume checkpoints;
- `sharding`: `fully_shard` (FSDP2) per decoder block, the vision tower and the root;
- `cli`: `CasaCLI`, what `casa-adapter run|fit|validate` runs.
"""
