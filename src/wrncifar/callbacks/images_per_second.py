"""Training speed on the progress bar: images/s from the host clock, without host–device syncs."""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


def images_in_batch(batch: Any) -> int:
    """The number of images of an (images, labels) batch."""
    return len(batch[0])


class ImagesPerSecond(Callback):
    """Logs `train/images_per_sec` (progress bar and loggers), averaged over windows of `window` steps.

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
        if self._steps == self.window:
            rate = self._images / (now - self._start)
            pl_module.log("train/images_per_sec", rate, on_step=True, on_epoch=False, prog_bar=True)
            self._start, self._images, self._steps = now, 0, 0
