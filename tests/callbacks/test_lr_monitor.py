"""The learning-rate monitor: Lightning's steps, plus the first and last step of every epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger

from tests.callbacks.test_images_per_second import fit
from tests.conftest import read_metrics
from wrncifar.callbacks.lr_monitor import LearningRateMonitor


class LearningRates(Callback):
    """The rate each step runs with, by step."""

    def __init__(self) -> None:
        self.by_step: dict[int, float] = {}

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        self.by_step[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


def logged_rates(run_dir: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["lr-SGD"]) for r in read_metrics(run_dir) if r.get("lr-SGD")}


@pytest.mark.parametrize(
    ("logging_interval", "steps"),
    [
        # 2 epochs of 12 steps: every 5th step (Lightning's), and each epoch's first and last step (0, 11, 12, 23).
        ("step", [0, 4, 9, 11, 12, 14, 19, 23]),
        (None, [0, 4, 9, 11, 12, 14, 19, 23]),  # the schedule is stepped every step
        ("epoch", [0, 12]),  # Lightning's, unchanged
    ],
)
def test_the_rate_is_logged_at_each_epochs_edges_and_every_n_steps(
    tmp_path: Path, logging_interval: str | None, steps: list[int]
) -> None:
    rates = LearningRates()
    logger = CSVLogger(tmp_path, name="csv", version="")
    monitor = LearningRateMonitor(logging_interval=logging_interval)
    fit([rates, monitor], tmp_path, max_epochs=2, logger=logger, log_every_n_steps=5)
    logged = logged_rates(tmp_path)
    assert sorted(logged) == steps
    assert logged == {step: rates.by_step[step] for step in steps}
    assert len(set(logged.values())) == len(steps)  # the warm-up and the cosine: a different rate at each
