"""The sharding plan for multi-GPU training with FSDP2 (`torch.distributed.fsdp.fully_shard`).

Used through Lightning's `ModelParallelStrategy`, which calls `CasaModule.configure_model` on every
rank with a device mesh. Each decoder block (its frozen weights, LoRA and CASA layer together) is one
FSDP unit; the vision tower is one unit; the root unit holds the rest, including the token embedding
and the LM head together, so tied embeddings stay tied. Frozen and trainable parameters may share a
unit: FSDP2 reduces gradients only for parameters that have them. The same plan runs on CPU (gloo)
with 2 processes, which is how it is tested without a GPU.
"""

from __future__ import annotations

from torch import nn


def shard_model(model: nn.Module, mesh=None, reshard_after_forward: bool = True) -> int:
    """Apply fully_shard to the decoder blocks, the vision tower and the root. Returns the number of units."""
    from torch.distributed.fsdp import fully_shard

    units = 0
    for block in model.decoder_blocks():
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
        units += 1
    if any(True for _ in model.vision.tower.parameters()):
        fully_shard(model.vision.tower, mesh=mesh, reshard_after_forward=reshard_after_forward)
        units += 1
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return units + 1


def shard_if_model_parallel(module) -> None:
    """Shard `module.model` when the trainer runs Lightning's ModelParallelStrategy (FSDP2)."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    trainer = getattr(module, "_trainer", None)
    if trainer is None or not isinstance(trainer.strategy, ModelParallelStrategy):
        return
    mesh = module.device_mesh
    dp_mesh = mesh["data_parallel"] if "data_parallel" in mesh.mesh_dim_names else mesh
    shard_model(module.model, mesh=dp_mesh)
