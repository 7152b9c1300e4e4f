"""Training speed on the progress bar and in the logs: images/s from the host clock, with one host–device sync a
window at most (none per step).

Every rate is the run's: under DDP, all processes' images together (`images_in_step`).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

KEY = "train/images_per_sec"


def images_in_batch(batch: Any) -> int:
    """The number of images of an (images, labels) batch."""
    return len(batch[0])


def images_in_step(trainer: Trainer, batch: Any) -> int:
    """The images the whole run trains in the step where this process trains `batch`: under DDP every process
    trains a batch of the same size at each step (Lightning's DistributedSampler pads the epoch to a multiple of
    the processes, `DeviceBatches` gives each the same share), so this process's batch × `world_size`."""
    return images_in_batch(batch) * trainer.world_size


def is_last_batch_of_epoch(trainer: Trainer, batch_idx: int) -> bool:
    """Whether `batch_idx` is the training epoch's last batch: its count (after `limit_train_batches`) is reached,
    or a loader of unknown length has run out (Lightning knows it one batch ahead)."""
    return batch_idx + 1 >= trainer.num_training_batches or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


class EpochClock:
    """The time and the run's images this process has trained in the current epoch, for rates and time estimates.

    It starts at the epoch's start or, when the epoch began before this process (Lightning resumes a checkpoint
    saved mid-epoch without calling `on_train_epoch_start`), at the first batch this process trains; `batches` and
    `images` count only what it trained since. A validation stops it (one in the middle of an epoch, with
    `trainer.val_check_interval`, is not training time); the next batch starts it again.
    Call `reset` at `on_train_start`, `start` at `on_train_epoch_start`, `batch_start`, `batch_end` and `pause` at
    the hooks they are named for (`pause` at `on_validation_start`).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Nothing trained yet in this epoch: a clock that runs only once a batch starts."""
        self.started: float | None = None  # when this process started (or resumed) the epoch
        self.first_batch = 0  # the epoch's batch it started at: above 0 when it resumed in the middle
        self.batches = 0
        self.images = 0
        self._trained = 0.0  # training seconds before the latest pause
        self._since: float | None = None  # when training went on after it; None while paused

    def start(self) -> None:
        self.reset()
        self.started = self._since = time.perf_counter()

    def batch_start(self, batch_idx: int) -> None:
        if self._since is None:
            self._since = time.perf_counter()
            if self.started is None:
                self.started, self.first_batch = self._since, batch_idx

    def batch_end(self, trainer: Trainer, batch: Any) -> None:
        self.batches += 1
        self.images += images_in_step(trainer, batch)

    def pause(self) -> None:
        if self._since is not None:
            self._trained += time.perf_counter() - self._since
            self._since = None

    @property
    def resumed(self) -> bool:
        """Whether this process started the epoch in its middle."""
        return self.started is not None and self.first_batch > 0

    def training_seconds(self, now: float) -> float:
        """Seconds of training (validation not counted) between the start and `now`."""
        return self._trained + (now - self._since if self._since is not None else 0.0)


class ImagesPerSecond(Callback):
    """Logs `train/images_per_sec`, the run's images (under DDP, all processes') per second, averaged over windows
    of `window` steps and over the rest of each epoch after the last full window: an epoch shorter than the window
    still gets a value (from two steps on; an epoch's first step only starts the clock).

    The clock starts again after each validation, and at a fit's first step, even one that resumes in the middle of
    an epoch (Lightning then skips `on_train_epoch_start`): neither validation nor start-up is training time.
    Each value goes to the loggers at the step whose end it measures, whatever `log_every_n_steps` (Lightning
    would log it only on those steps, late and repeated), and to the progress bar.
    Reads the host clock at the window's ends after waiting for the device (CUDA) there: the host runs ahead of
    the GPU by a queue of steps, empty after the sync that ends a validation and full soon after, so without the
    sync an epoch's first window would time the host queueing steps the GPU had not yet run, a rate too high. One
    sync a window, when its last step ends (the next window's start), and one when an epoch's first window starts;
    no other step waits for the device.
    """

    def __init__(self, window: int = 50) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._start: float | None = None
        self._images = 0
        self._steps = 0

    def _restart(self) -> None:
        self._start, self._images, self._steps = None, 0, 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restart()  # a second fit of this callback: its first step waits for data and compilation again

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restart()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restart()  # validation time is not training time (its window's images are dropped with it)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # The first step of an epoch (or after a validation) waits for data and, once, for compilation: it opens the
        # window, which the next steps fill.
        opens = self._start is None
        if not opens:
            self._images += images_in_step(trainer, batch)
            self._steps += 1
        closes = not opens and (self._steps == self.window or is_last_batch_of_epoch(trainer, batch_idx))
        if (opens or closes) and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # the window's end is the device's, not the host's
        now = time.perf_counter()
        if opens:
            self._start = now
        elif closes:
            rate = self._images / (now - self._start)
            pl_module.log(KEY, rate, on_step=True, on_epoch=False, prog_bar=True, logger=False)
            # The step this batch ran as, on the axis Lightning's own logs use (the LearningRateMonitor's too).
            step = trainer.fit_loop.epoch_loop._batches_that_stepped
            for logger in trainer.loggers:
                logger.log_metrics({KEY: rate}, step=step)
            self._start, self._images, self._steps = now, 0, 0
