"""The learning rate in the logs: every `log_every_n_steps` steps, and at each epoch's first and last step."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor as LightningLearningRateMonitor

from wrncifar.callbacks.images_per_second import is_last_batch_of_epoch


class LearningRateMonitor(LightningLearningRateMonitor):
    """Lightning's LearningRateMonitor (same arguments) that, with a per-step `logging_interval`, also logs at the
    first and last step of every epoch: a run shorter than `log_every_n_steps` steps still has its schedule in the
    logs, and every epoch's start and end lie on the curve. (`logging_interval="epoch"` is Lightning's, unchanged.)
    """

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)  # every log_every_n_steps steps
        edge = batch_idx == 0 or is_last_batch_of_epoch(trainer, batch_idx)
        if not edge or self.logging_interval == "epoch" or trainer._logger_connector.should_update_logs:
            return  # not an edge, or Lightning's own logging covers it
        stats = self._extract_stats(trainer, "step" if self.logging_interval is None else "any")
        for logger in trainer.loggers:
            logger.log_metrics(stats, step=trainer.fit_loop.epoch_loop._batches_that_stepped)
