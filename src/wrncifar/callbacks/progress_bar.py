"""The console's progress: Rich's bar on a terminal, plain lines when the console is a file.

A SLURM job, `nohup` or CI writes the console to a file, where a live bar prints only its last frame of each stage:
hours without a line. There, `PlainProgressBar` writes one line every few seconds through the logging system, so
the lines reach the console and the run's log file alike.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from wrncifar.callbacks.images_per_second import EpochClock, images_in_step

log = logging.getLogger(__name__)


def console_progress(every_n_seconds: float = 30.0, terminal: bool | None = None) -> ProgressBar:
    """Rich's live bar when stdout is a terminal (or `terminal=True`), else `PlainProgressBar(every_n_seconds)`."""
    if terminal is None:
        terminal = sys.stdout.isatty()
    return TerminalProgressBar() if terminal else PlainProgressBar(every_n_seconds)


class TerminalProgressBar(RichProgressBar):
    """Rich's live bar, with the run's log lines (the epoch summaries, warnings) printed above it instead of
    into it: console log handlers write to whatever `sys.stdout`/`sys.stderr` is at the time, which is Rich's
    proxy while the bar is live."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        for handler in logging.getLogger().handlers:
            if type(handler) is logging.StreamHandler:
                for name in ("stdout", "stderr"):
                    if handler.stream in (getattr(sys, name), getattr(sys, f"__{name}__")):
                        handler.setStream(_CurrentStream(name))


class _CurrentStream:
    """Writes to `sys.<name>` as it is at each write."""

    def __init__(self, name: str) -> None:
        self.name = name

    def write(self, text: str) -> int:
        return getattr(sys, self.name).write(text)

    def flush(self) -> None:
        getattr(sys, self.name).flush()


def format_duration(seconds: float) -> str:
    """`2 days 3:04:05`, `0:01:20`; `?` for an unknown (infinite or NaN) duration."""
    if not math.isfinite(seconds):
        return "?"
    days, rest = divmod(round(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    clock = f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days} day{'s' if days > 1 else ''} {clock}" if days else clock


def format_metrics(metrics: dict[str, Any]) -> str:
    """`train/loss 2.314 · val/acc 0.4123`: four significant digits, numbers only."""
    parts = []
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{name} {value:.4g}")
    return " · ".join(parts)


class PlainProgressBar(ProgressBar):
    """One line every `every_n_seconds` of training, validation, test or prediction, on rank 0.

    Training lines give the epoch, step, the mean loss since the previous line, images/s (the run's: under DDP,
    all processes' images together) and when the epoch and the run should end, from the steps this process has
    trained in the epoch: after a resume in the middle of an epoch (Lightning then skips `on_train_epoch_start`),
    from the resumed step on. Validation time counts in neither. The loss is summed on the device and read once
    per line: no step waits for the device. A stage shorter than `every_n_seconds` prints nothing (the epoch's
    summary line says how it went).
    """

    def __init__(self, every_n_seconds: float = 30.0) -> None:
        super().__init__()
        if not every_n_seconds > 0:
            raise ValueError(f"every_n_seconds must be > 0, got {every_n_seconds}")
        self.every_n_seconds = every_n_seconds
        self._enabled = True
        self._stage_start = 0.0  # of the evaluation stage; training has its clock
        self._last_line = 0.0
        self._clock = EpochClock()
        self._line_trained = 0.0  # the clock's training seconds at the previous training line
        self._images = 0
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _start_stage(self) -> None:
        self._stage_start = self._last_line = time.perf_counter()

    def _start_training_lines(self) -> None:
        """The next training line `every_n_seconds` from now, about the steps from now on."""
        self._last_line = time.perf_counter()
        self._line_trained = self._clock.training_seconds(self._last_line)
        self._images, self._loss_sum, self._loss_count = 0, None, 0

    def _due(self, trainer: Trainer) -> float | None:
        """The time now when a line is due, else None."""
        if not (self._enabled and trainer.is_global_zero):
            return None
        now = time.perf_counter()
        return now if now - self._last_line >= self.every_n_seconds else None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._clock.reset()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._clock.start()
        self._start_training_lines()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        resumed = self._clock.started is None  # in the middle of the epoch: its start was not seen
        self._clock.batch_start(batch_idx)
        if resumed:
            self._start_training_lines()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._clock.batch_end(trainer, batch)
        self._images += images_in_step(trainer, batch)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1
        now = self._due(trainer)
        if now is None:
            return
        done, total = batch_idx + 1, self.total_train_batches
        trained = self._clock.training_seconds(now)
        parts = [f"Epoch {trainer.current_epoch + 1}/{epoch_count(trainer)}", f"step {_of(done, total)}"]
        if self._loss_sum is not None:
            parts.append(f"train/loss {self._loss_sum.item() / self._loss_count:.4g}")
        parts.append(f"{self._images / (trained - self._line_trained):,.0f} images/s")
        per_step = trained / self._clock.batches
        parts.append(f"epoch ends in {format_duration((total - done) * per_step)}")
        parts.append(
            f"training ends in ~{format_duration(remaining_batches(trainer) * per_step)} (validation not counted)"
        )
        log.info(" · ".join(parts))
        self._last_line, self._line_trained = now, trained
        self._images, self._loss_sum, self._loss_count = 0, None, 0

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._clock.pause()

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start_stage()

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        name = "Sanity check" if trainer.sanity_checking else "Validation"
        self._evaluation_line(trainer, name, batch_idx, dataloader_idx, "total_val_batches_current_dataloader")

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start_stage()

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._evaluation_line(trainer, "Test", batch_idx, dataloader_idx, "total_test_batches_current_dataloader")

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start_stage()

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._evaluation_line(
            trainer, "Prediction", batch_idx, dataloader_idx, "total_predict_batches_current_dataloader"
        )

    def _evaluation_line(self, trainer: Trainer, name: str, batch_idx: int, dataloader_idx: int, total: str) -> None:
        """A line for batch `batch_idx` of the stage `name` when one is due; `total` names the base class's
        property that counts the current loader's batches."""
        now = self._due(trainer)
        if now is None:
            return
        self.has_dataloader_changed(dataloader_idx)  # points the `total_…_current_dataloader` at this loader
        done, total = batch_idx + 1, getattr(self, total)
        per_batch = (now - self._stage_start) / max(done, 1)
        log.info("%s · batch %s · ends in %s", name, _of(done, total), format_duration((total - done) * per_batch))
        self._last_line = now


def remaining_batches(trainer: Trainer) -> float:
    """Training batches left in the run (optimizer steps left × batches per step)."""
    return (trainer.estimated_stepping_batches - trainer.global_step) * trainer.accumulate_grad_batches


def epoch_count(trainer: Trainer) -> str:
    """The run's number of epochs, or `?` when only steps limit it."""
    return str(trainer.max_epochs) if trainer.max_epochs not in (None, -1) else "?"


def _of(done: int, total: float) -> str:
    """`120/391 (31%)`, or `120` when the total is unknown."""
    if not math.isfinite(total) or total <= 0:
        return str(done)
    return f"{done}/{int(total)} ({100 * done / total:.0f}%)"
