"""Checkpoints every N optimizer steps, except on an epoch's last batch."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class StepCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint(every_n_train_steps=N)` that skips the last batch of an epoch.

    A checkpoint taken there sits between the epoch's last step and its validation; Lightning resumes it past
    the validation, which then never runs. The epoch-end checkpoint (`last.ckpt`) follows that batch anyway.
    """

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
