"""Training speed on the progress bar and in the logs: images/s from the host clock, without host–device syncs."""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

KEY = "train/images_per_sec"


def images_in_batch(batch: Any) -> int:
    """The number of images of an (images, labels) batch."""
    return len(batch[0])


def is_last_batch_of_epoch(trainer: Trainer, batch_idx: int) -> bool:
    """Whether `batch_idx` is the training epoch's last batch: its count (after `limit_train_batches`) is reached,
    or a loader of unknown length has run out (Lightning knows it one batch ahead)."""
    return batch_idx + 1 >= trainer.num_training_batches or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


class ImagesPerSecond(Callback):
    """Logs `train/images_per_sec`, averaged over windows of `window` steps and over the rest of each epoch after
    the last full window: an epoch shorter than the window still gets a value (from two steps on; an epoch's first
    step only starts the clock).

    Each value goes to the loggers at the step whose end it measures, whatever `log_every_n_steps` (Lightning
    would log it only on those steps, late and repeated), and to the progress bar.
    Reads the host clock only: a GPU runs ahead of the host by a bounded queue, so over a window the host's
    rate is the device's rate, and no step waits for the device.
    """

    def __init__(self, window: int = 50) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._start: float | None = None
        self._images = 0
        self._steps = 0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start, self._images, self._steps = None, 0, 0  # validation time is not training time

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._start is None:  # the first step of an epoch waits for data and, once, for compilation
            self._start = now
            return
        self._images += images_in_batch(batch)
        self._steps += 1
        if self._steps == self.window or is_last_batch_of_epoch(trainer, batch_idx):
            rate = self._images / (now - self._start)
            pl_module.log(KEY, rate, on_step=True, on_epoch=False, prog_bar=True, logger=False)
            # The step this batch ran as, on the axis Lightning's own logs use (the LearningRateMonitor's too).
            step = trainer.fit_loop.epoch_loop._batches_that_stepped
            for logger in trainer.loggers:
                logger.log_metrics({KEY: rate}, step=step)
            self._start, self._images, self._steps = now, 0, 0
