from __future__ import annotations

import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import CSVLogger

import wrncifar.callbacks.images_per_second as images_per_second
from tests.conftest import TRAINED_EPOCHS, read_metrics
from wrncifar.callbacks.images_per_second import ImagesPerSecond
from wrncifar.callbacks.step_checkpoint import StepCheckpoint
from wrncifar.data.synthetic import SyntheticCIFAR100DataModule
from wrncifar.models.classifier import ImageClassifier
from wrncifar.models.wideresnet import WideResNet

BATCH = 8


def small_module() -> ImageClassifier:
    return ImageClassifier(WideResNet(num_classes=10, widths=[4, 8, 8, 8], blocks_per_stage=1))


def small_data() -> SyntheticCIFAR100DataModule:
    """100 training images on the device path: 12 full batches of 8 (drop_last)."""
    return SyntheticCIFAR100DataModule(
        num_classes=10,
        train_per_class=12,
        test_per_class=2,
        val_per_class=2,
        batch_size=BATCH,
        num_workers=0,
        on_device=True,
        drop_last=True,
    )


def fit(callback: Callback | list[Callback], tmp_path, max_epochs: int = 1, **kwargs) -> Trainer:
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=callback if isinstance(callback, list) else [callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        **kwargs,
    )
    trainer.fit(small_module(), datamodule=small_data())
    return trainer


STEPS_BEFORE_THE_STOP = 5  # of the 12 of an epoch


def fit_resumed_mid_epoch(callbacks: list[Callback], tmp_path) -> float:
    """Train the first `STEPS_BEFORE_THE_STOP` steps of an epoch, saved by a step checkpoint, then resume that
    checkpoint in a new Trainer with `callbacks` to the end of 2 epochs (Lightning skips `on_train_epoch_start`
    of the resumed epoch); return the seconds both took, by the test's own clock."""
    began = time.perf_counter()
    step = StepCheckpoint(dirpath=tmp_path, filename="step", every_n_train_steps=STEPS_BEFORE_THE_STOP)
    stopped = Trainer(
        accelerator="cpu",
        max_steps=STEPS_BEFORE_THE_STOP,
        callbacks=[step],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    stopped.fit(small_module(), datamodule=small_data())
    resumed = Trainer(
        accelerator="cpu",
        max_epochs=2,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    with warnings.catch_warnings():  # that the step checkpoint is not among `callbacks`: on purpose
        warnings.filterwarnings("ignore", "Be aware that when using `ckpt_path`")
        resumed.fit(small_module(), datamodule=small_data(), ckpt_path=tmp_path / "step.ckpt")
    return time.perf_counter() - began


def rank_zero_of_two_processes(batches: int) -> SimpleNamespace:
    """What the speed callbacks read of the trainer of rank 0 in a 2-process DDP run of `batches` steps an epoch,
    at its first step (no process started)."""
    epoch_loop = SimpleNamespace(batch_progress=SimpleNamespace(is_last_batch=False), _batches_that_stepped=0)
    return SimpleNamespace(
        world_size=2,
        global_rank=0,
        is_global_zero=True,
        num_training_batches=batches,
        estimated_stepping_batches=batches,
        accumulate_grad_batches=1,
        global_step=0,
        current_epoch=0,
        max_epochs=1,
        sanity_checking=False,
        accelerator=None,
        optimizers=[],
        callback_metrics={},
        loggers=[],
        fit_loop=SimpleNamespace(epoch_loop=epoch_loop),
    )


def local_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """One process's batch of `BATCH` images."""
    return torch.zeros(BATCH, 3, 32, 32), torch.zeros(BATCH, dtype=torch.long)


def set_clock(monkeypatch, *modules) -> SimpleNamespace:
    """The host clock of `modules` (and of `images_per_second`) reads `clock.now`, which the test sets."""
    clock = SimpleNamespace(now=0.0)
    for module in (images_per_second, *modules):
        monkeypatch.setattr(module, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    return clock


def half_a_second_per_reading(monkeypatch) -> None:
    """Each reading of the callback's clock advances it by half a second: 8 images per step make 16 images/s."""
    ticks = iter(range(1000))
    monkeypatch.setattr(images_per_second, "time", SimpleNamespace(perf_counter=lambda: next(ticks) * 0.5))


def test_images_per_second_is_images_over_host_time_of_a_window(tmp_path, monkeypatch) -> None:
    half_a_second_per_reading(monkeypatch)
    trainer = fit(ImagesPerSecond(window=3), tmp_path, logger=False)
    # 3 steps of 8 images between readings 1.5 s apart (the first step of the epoch only starts the clock).
    assert trainer.callback_metrics["train/images_per_sec"].item() == pytest.approx(3 * BATCH / 1.5)
    assert "train/images_per_sec" in trainer.progress_bar_metrics


def logged_rates(run_dir: Path) -> tuple[list[int], list[float]]:
    rows = [r for r in read_metrics(run_dir) if r.get("train/images_per_sec")]
    return [int(r["step"]) for r in rows], [float(r["train/images_per_sec"]) for r in rows]


def test_each_window_and_each_epochs_rest_are_logged_at_their_step(tmp_path, monkeypatch) -> None:
    half_a_second_per_reading(monkeypatch)
    logger = CSVLogger(tmp_path, name="csv", version="")
    fit(ImagesPerSecond(window=5), tmp_path, max_epochs=2, logger=logger, log_every_n_steps=50)
    # 12 steps an epoch: the first starts the clock, steps 1-5 and 6-10 are windows, step 11 is the epoch's rest;
    # none of them is a step log_every_n_steps=50 logs.
    assert logged_rates(tmp_path) == ([5, 10, 11, 17, 22, 23], [16.0] * 6)


@pytest.mark.slow
def test_a_run_shorter_than_the_window_logs_its_rate_once_an_epoch(trained_run: Path) -> None:
    steps, rates = logged_rates(trained_run)
    epoch_ends = [int(r["step"]) for r in read_metrics(trained_run) if r["train/loss"]]  # 3 epochs of 16 steps
    assert len(epoch_ends) == TRAINED_EPOCHS and steps == epoch_ends
    assert all(rate > 0 for rate in rates)


def test_under_ddp_the_logged_rate_counts_every_process_images(monkeypatch) -> None:
    clock = set_clock(monkeypatch)
    trainer = rank_zero_of_two_processes(batches=4)
    logged = {}
    pl_module = SimpleNamespace(
        log=lambda key, value, **kwargs: logged.update({key: value}), device=torch.device("cpu")
    )
    callback = ImagesPerSecond(window=2)
    callback.on_train_start(trainer, pl_module)
    callback.on_train_epoch_start(trainer, pl_module)
    for batch_idx in range(3):  # the first step starts the clock, the next two (1 s each) are the window
        clock.now = float(batch_idx)
        callback.on_train_batch_end(trainer, pl_module, None, local_batch(), batch_idx)
    # Each step trains BATCH images in each of the 2 processes: the run's rate, not rank 0's.
    assert logged["train/images_per_sec"] == pytest.approx(2 * BATCH)


@pytest.mark.parametrize(("device", "synced_at"), [("cuda", [0, 3, 6, 7, 0, 3, 6, 7]), ("cpu", [])])
def test_on_a_gpu_each_window_starts_and_ends_when_the_device_is_done_syncing_once_a_window(
    monkeypatch, device, synced_at
) -> None:
    """The host runs ahead of a GPU: after an epoch's start (validation's end synced it) the first window would time
    the host queueing steps, not the GPU running them. So the device is synced when an epoch's first window opens
    and when each window closes (also the next one's start): once a window, never at the other steps; on a CPU,
    never."""
    clock = set_clock(monkeypatch)
    trainer = rank_zero_of_two_processes(batches=8)
    synced = []
    batch_idx = 0
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append((batch_idx, str(device))))
    pl_module = SimpleNamespace(log=lambda *args, **kwargs: None, device=torch.device(device))
    callback = ImagesPerSecond(window=3)
    callback.on_train_start(trainer, pl_module)
    for _ in range(2):  # each epoch: its first step opens a window, steps 1-3 and 4-6 close one, step 7 the rest
        callback.on_train_epoch_start(trainer, pl_module)
        for batch_idx in range(8):
            clock.now += 1.0
            callback.on_train_batch_end(trainer, pl_module, None, local_batch(), batch_idx)
        callback.on_validation_start(trainer, pl_module)
    assert synced == [(i, device) for i in synced_at]


def test_images_per_second_rejects_an_empty_window() -> None:
    with pytest.raises(ValueError, match="window"):
        ImagesPerSecond(window=0)
