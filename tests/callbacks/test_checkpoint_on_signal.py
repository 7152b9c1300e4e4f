"""A stop signal in the middle of a validation or of the test after fit, in a real Lightning fit in this process:
the checkpoint it leaves is one a resume can continue from, never one cut mid-validation or replaced by the
tested weights."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tests.conftest import quiet_trainer
from wrncifar.callbacks.checkpoint_on_signal import CheckpointOnSignal
from wrncifar.data.synthetic import SyntheticCIFAR100DataModule
from wrncifar.models.classifier import ImageClassifier
from wrncifar.models.wideresnet import WideResNet


@pytest.fixture(autouse=True)
def own_handlers() -> Iterator[None]:
    """The callback installs its handlers for the rest of the process: the test's are put back after it."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


class SignalAt(Callback):
    """Sends SIGTERM to this process at the first batch of the stage (and epoch) given."""

    def __init__(self, stage: str, epoch: int | None = None) -> None:
        self.stage, self.epoch, self.sent = stage, epoch, False

    def _maybe_send(self, trainer: Trainer) -> None:
        if not self.sent and self.epoch in (None, trainer.current_epoch):
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)

    def on_validation_batch_start(self, trainer: Trainer, *args) -> None:
        if self.stage == "validate" and not trainer.sanity_checking:
            self._maybe_send(trainer)

    def on_test_batch_start(self, trainer: Trainer, *args) -> None:
        if self.stage == "test":
            self._maybe_send(trainer)


def datamodule() -> SyntheticCIFAR100DataModule:
    # Two validation batches: a stop after the first would cut the validation in two.
    return SyntheticCIFAR100DataModule(
        num_classes=10, train_per_class=4, val_per_class=2, test_per_class=2, batch_size=8, eval_batch_size=10
    )


def trainer_for(tmp_path: Path, *callbacks: Callback) -> tuple[Trainer, ModelCheckpoint]:
    epochs = ModelCheckpoint(
        dirpath=tmp_path,
        filename="epoch_{epoch:03d}",
        auto_insert_metric_name=False,
        save_top_k=-1,
        save_last=True,
        monitor="val/acc",
        mode="max",
    )
    return quiet_trainer([CheckpointOnSignal(tmp_path), epochs, *callbacks], max_epochs=3), epochs


def test_a_signal_during_validation_stops_the_run_once_the_validation_has_ended(tmp_path: Path) -> None:
    trainer, _ = trainer_for(tmp_path, SignalAt("validate", epoch=1))
    model = ImageClassifier(WideResNet(num_classes=10, widths=[4, 8, 8, 8], blocks_per_stage=1))
    with pytest.raises(SIGTERMException) as stopped:
        trainer.fit(model, datamodule=datamodule())
    assert stopped.value.saved and not stopped.value.after_training
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 2, "epoch 1 ended, validated"
    assert sorted(path.name for path in tmp_path.glob("epoch_*.ckpt")) == ["epoch_000.ckpt", "epoch_001.ckpt"]


def test_a_signal_during_the_test_after_fit_leaves_training_checkpoints_as_they_were(tmp_path: Path) -> None:
    trainer, epochs = trainer_for(tmp_path, SignalAt("test"))
    model = ImageClassifier(WideResNet(num_classes=10, widths=[4, 8, 8, 8], blocks_per_stage=1))
    data = datamodule()
    trainer.fit(model, datamodule=data)
    saved = {path.name: path.read_bytes() for path in tmp_path.glob("*.ckpt")}
    with pytest.raises(SIGTERMException) as stopped:
        trainer.test(model, datamodule=data, ckpt_path=epochs.best_model_path, weights_only=True)
    assert not stopped.value.saved and stopped.value.after_training
    assert {path.name: path.read_bytes() for path in tmp_path.glob("*.ckpt")} == saved
