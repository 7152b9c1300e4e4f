"""The epoch's line and the start-up estimate of `EpochSummary`: true after a resume in the middle of an epoch, the
lr its last step trained with, and the run's speed under DDP. The lines of a whole `python src/train.py` are
checked in `test_progress_bar.py`."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

import tests.callbacks.test_images_per_second as images_per_second_tests
import wrncifar.callbacks.epoch_summary as epoch_summary
from tests.callbacks.test_images_per_second import (
    BATCH,
    STEPS_BEFORE_THE_STOP,
    fit,
    fit_resumed_mid_epoch,
    local_batch,
    rank_zero_of_two_processes,
    set_clock,
)
from tests.callbacks.test_lr_monitor import LearningRates
from wrncifar.callbacks.epoch_summary import EpochSummary
from wrncifar.models.classifier import ImageClassifier

CLOCK = r"(\d+):(\d\d):(\d\d)"


def seconds(hours: str, minutes: str, secs: str) -> int:
    return 3600 * int(hours) + 60 * int(minutes) + int(secs)


def summary_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == epoch_summary.__name__]


def test_an_epoch_resumed_in_its_middle_is_timed_from_the_resume(tmp_path, caplog) -> None:
    caplog.set_level("INFO", logger=epoch_summary.__name__)
    elapsed = fit_resumed_mid_epoch([EpochSummary(measure_steps=2)], tmp_path)
    lines = summary_lines(caplog)
    resumed = next(line for line in lines if line.startswith("Epoch 1/2"))
    match = re.match(
        rf"Epoch 1/2 done in {CLOCK} since the resume at step {STEPS_BEFORE_THE_STOP + 1} "
        rf"\(validation {CLOCK}\) · .* · ([\d,]+) images/s · run ends in ~{CLOCK}$",
        resumed,
    )
    assert match, resumed
    took, speed, run_left = seconds(*match.groups()[:3]), match.group(7), seconds(*match.groups()[7:])
    # Rounded to the second; the resumed part of the epoch is within the test's own time, and so is the estimate
    # of the 12 steps left, made from the 7 steps trained since the resume (each with its share of validation).
    assert took <= elapsed + 0.5
    assert run_left <= 12 / 7 * elapsed + 0.5
    assert int(speed.replace(",", "")) > 0
    assert re.match(rf"Epoch 2/2 done in {CLOCK} \(validation", next(li for li in lines if li.startswith("Epoch 2/2")))


def printed_lr(lines: list[str], epoch: str) -> str:
    line = next(line for line in lines if line.startswith(f"Epoch {epoch} done"))
    match = re.search(r" · lr (\S+) · ", line)
    assert match, line
    return match.group(1)


@pytest.fixture
def lr_lowered_after_each_epoch(monkeypatch) -> None:
    """The runs of `test_images_per_second` train with the multistep schedule, ×0.2 at epochs 1 and 2: each epoch's
    last step trains at a rate the schedule lowers right after it, before the epoch ends."""
    small_module = images_per_second_tests.small_module
    multistep = {"name": "multistep", "milestones": (1, 2), "gamma": 0.2}
    monkeypatch.setattr(
        images_per_second_tests, "small_module", lambda: ImageClassifier(small_module().net, scheduler=multistep)
    )


@pytest.mark.usefixtures("lr_lowered_after_each_epoch")
@pytest.mark.parametrize(("accumulate", "last_steps"), [(1, (11, 23)), (5, (2, 5))], ids=["every batch", "by 5"])
def test_the_epoch_line_shows_the_lr_its_last_step_trained_with(
    tmp_path, caplog, accumulate: int, last_steps: tuple[int, int]
) -> None:
    """2 epochs of 12 batches: 12 optimizer steps each, or 3 when accumulating by 5 (windows of 5, 5 and the epoch's
    last 2); the batches of a window train with the rate of its step."""
    caplog.set_level("INFO", logger=epoch_summary.__name__)
    rates = LearningRates()
    fit([rates, EpochSummary()], tmp_path, max_epochs=2, logger=False, accumulate_grad_batches=accumulate)
    lines = summary_lines(caplog)
    assert [printed_lr(lines, "1/2"), printed_lr(lines, "2/2")] == ["0.1", "0.02"]  # not 0.02 and 0.004
    assert [f"{rates.by_step[step]:.4g}" for step in last_steps] == ["0.1", "0.02"]


@pytest.mark.usefixtures("lr_lowered_after_each_epoch")
def test_an_epoch_resumed_in_its_middle_shows_the_lr_of_its_last_step(tmp_path, caplog) -> None:
    caplog.set_level("INFO", logger=epoch_summary.__name__)
    rates = LearningRates()
    fit_resumed_mid_epoch([rates, EpochSummary()], tmp_path)
    lines = summary_lines(caplog)
    assert min(rates.by_step) == STEPS_BEFORE_THE_STOP  # the resumed trainer's steps only
    assert [printed_lr(lines, "1/2"), printed_lr(lines, "2/2")] == ["0.1", "0.02"]
    assert [f"{rates.by_step[step]:.4g}" for step in (11, 23)] == ["0.1", "0.02"]


def test_under_ddp_the_epoch_line_and_the_estimate_count_every_process_images(monkeypatch, caplog) -> None:
    caplog.set_level("INFO", logger=epoch_summary.__name__)
    clock = set_clock(monkeypatch, epoch_summary)
    trainer = rank_zero_of_two_processes(batches=4)
    pl_module = SimpleNamespace(device=torch.device("cpu"))
    summary = EpochSummary(measure_steps=2)
    summary.on_train_start(trainer, pl_module)
    summary.on_train_epoch_start(trainer, pl_module)
    for batch_idx in range(4):  # one second a step; the estimate measures steps 2 and 3
        summary.on_train_batch_start(trainer, pl_module, local_batch(), batch_idx)
        clock.now += 1.0
        summary.on_train_batch_end(trainer, pl_module, None, local_batch(), batch_idx)
    summary.on_train_epoch_end(trainer, pl_module)
    # Each step trains BATCH images in each of the 2 processes: the run's rate, not rank 0's.
    run_rate = f"{2 * BATCH} images/s"
    lines = summary_lines(caplog)
    assert any(line.startswith(f"Measured 1 s per step ({run_rate})") for line in lines), lines
    assert any(line.startswith(f"Epoch 1/1 done in 0:00:04 · {run_rate} · ") for line in lines), lines
