"""What a run tells its researcher as it goes: how long it will take, measured on its first steps, and one line
per epoch (losses, accuracies, lr, speed, time left) in the console and the run's log file."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.accelerators import CPUAccelerator

from wrncifar.callbacks.images_per_second import EpochClock, images_in_step
from wrncifar.callbacks.progress_bar import epoch_count, format_duration, format_metrics, remaining_batches
from wrncifar.callbacks.start_up import phase_done, phase_times, started_at
from wrncifar.models.compilation import compile_cache_summary

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best")


class EpochSummary(Callback):
    """Logs, on rank 0:

    - when the first step is done: how long after the process (or a sweep's job) started, and where that time
      went, phase by phase (`wrncifar.callbacks.start_up.PHASES`: Python and Hydra, imports, config and set-up,
      data, the model's set-up, the sanity validation — with torch.compile, the evaluation graph's compilation —,
      the training data, the first step itself — the training graph's), with how many compiled graphs came from
      the compilation cache;
    - once, after `measure_steps` steps (the first step, which waits for data and compilation, not counted): the
      time per step and what it makes of the whole run; on the CPU, when that exceeds `cpu_warning_hours`, a
      warning that says what to run instead;
    - after each epoch: its time (training and validation), `SUMMARY_METRICS`, the lr its last step trained with,
      images/s and the time left. An epoch this process resumed in its middle (Lightning then skips
      `on_train_epoch_start`) is timed from the resumed step, and its line says so.

    The lr is read as each training batch starts, not at the epoch's end: by then the schedule has already stepped
    past the epoch's last step (a per-step schedule shows the next step's rate, 0 at the end of a cosine run; a
    multistep one the lowered rate at its milestone). A batch that only accumulates gradients trains with the rate
    of its window's optimizer step, which the schedule has not stepped past yet either.

    Images/s are the run's: under DDP, all processes' images together.
    """

    def __init__(self, measure_steps: int = 10, cpu_warning_hours: float = 1.0) -> None:
        if measure_steps < 1:
            raise ValueError(f"measure_steps must be >= 1, got {measure_steps}")
        self.measure_steps = measure_steps
        self.cpu_warning_hours = cpu_warning_hours
        self._measured = False
        self._steps_seen = 0
        self._window_start = 0.0
        self._window_images = 0
        self._clock = EpochClock()
        self._validated = False
        self._lr: float | None = None  # of this epoch's latest step this process trained

    # The start-up phases this callback sees end (Lightning calls `setup` after the datamodule's, `on_fit_start`
    # once the strategy has set the model up).
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            phase_done("data")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        phase_done("model")

    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        phase_done("sanity")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._measured, self._steps_seen = False, 0
        self._clock.reset()
        self._validated = False
        self._lr = None
        phase_done("train-data")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._clock.start()
        self._validated = False
        self._lr = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._clock.batch_start(batch_idx)
        if trainer.optimizers:
            self._lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._clock.batch_end(trainer, batch)
        if self._measured or not trainer.is_global_zero:
            return
        self._steps_seen += 1
        if self._steps_seen == 1:  # waits for data and, once, for compilation: not a typical step
            self._window_start, self._window_images = _device_time(pl_module), 0
            self._log_start_up()  # after the sync: the first step's device work counts as the step's
            return
        self._window_images += images_in_step(trainer, batch)
        if self._steps_seen == self.measure_steps + 1:
            self._measured = True
            seconds = _device_time(pl_module) - self._window_start
            self._log_estimate(trainer, seconds / self.measure_steps, self._window_images / seconds)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._clock.pause()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validated = self._validated or not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        now, clock = time.perf_counter(), self._clock
        names = SUMMARY_METRICS if self._validated else SUMMARY_METRICS[:2]
        metrics = {name: trainer.callback_metrics[name] for name in names if name in trainer.callback_metrics}
        parts = [_epoch_done(trainer, clock, now, self._validated), format_metrics(metrics)]
        if self._lr is not None:  # None for an epoch resumed after its last step: nothing trained here
            parts.append(f"lr {self._lr:.4g}")
        train_time = clock.training_seconds(now)
        if train_time > 0:
            parts.append(f"{clock.images / train_time:,.0f} images/s")
        remaining = remaining_batches(trainer)
        if remaining > 0 and clock.batches > 0:  # per batch trained here, its share of the epoch's validation too
            parts.append(f"run ends in ~{format_duration(remaining * (now - clock.started) / clock.batches)}")
        log.info(" · ".join(p for p in parts if p))

    def _log_start_up(self) -> None:
        phase_done("step")
        _, since = started_at()
        phases = phase_times()
        compiled = compile_cache_summary()
        log.info(
            "First training step done %.1f s after %s started: %s%s",
            sum(seconds for _, seconds in phases),
            since,
            ", ".join(f"{seconds:.1f} s {label}" for label, seconds in phases),
            f" ({compiled})" if compiled else "",
        )

    def _log_estimate(self, trainer: Trainer, per_step: float, images_per_second: float) -> None:
        remaining = remaining_batches(trainer)
        total = format_duration(remaining * per_step)
        log.info(
            "Measured %.3g s per step (%s images/s): the %d steps left of this run should take about %s, "
            "validation not counted",
            per_step,
            f"{images_per_second:,.0f}",
            remaining,
            total,
        )
        if isinstance(trainer.accelerator, CPUAccelerator) and remaining * per_step > 3600 * self.cpu_warning_hours:
            log.warning(
                "This run trains on the CPU and would take about %s. To check a set-up in a minute: make smoke "
                "(model=wrn_tiny data=synthetic); for the full recipe, a GPU (trainer=gpu; minutes per run, see "
                "docs/benchmarks.md).",
                total,
            )


def _epoch_done(trainer: Trainer, clock: EpochClock, now: float, validated: bool) -> str:
    """`Epoch 3/200 done in 0:00:31 (validation 0:00:02)`; for an epoch this process resumed in its middle, the time
    since then, `… done in 0:00:12 since the resume at step 120 (…)`; no time for one it trained nothing of."""
    epoch = f"Epoch {trainer.current_epoch + 1}/{epoch_count(trainer)} done"
    if clock.started is None:  # resumed after its last step (a checkpoint saved at its end)
        return f"{epoch} before the resume"
    took = format_duration(now - clock.started)
    if clock.resumed:
        took += f" since the resume at step {clock.first_batch + 1}"
    validation = now - clock.started - clock.training_seconds(now)
    return f"{epoch} in {took}" + (f" (validation {format_duration(validation)})" if validated else "")


def _device_time(pl_module: LightningModule) -> float:
    """The host clock once the device has finished its queued work (one sync, twice per run)."""
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)
    return time.perf_counter()
