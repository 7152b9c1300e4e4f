"""GPU memory of the training process, per epoch."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

GIB = 2**30


class GpuMemory(Callback):
    """Logs `gpu/memory_allocated_gib` (tensors), `gpu/memory_reserved_gib` (the caching allocator's pool) and
    `gpu/max_memory_allocated_gib` (the epoch's peak) at the end of each training epoch; nothing on other devices.

    The allocator's counters are read on the host: no device sync.
    """

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A run resumed mid-epoch starts without `on_train_epoch_start`: its epoch's peak starts here, not with the
        # set-up (the data copied to the GPU, compilation, the sanity validation).
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        device = pl_module.device
        if device.type != "cuda":
            return
        memory = {
            "gpu/memory_allocated_gib": torch.cuda.memory_allocated(device) / GIB,
            "gpu/memory_reserved_gib": torch.cuda.memory_reserved(device) / GIB,
            "gpu/max_memory_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
        }
        pl_module.log_dict(memory, on_step=False, on_epoch=True)
