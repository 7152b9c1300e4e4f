"""Where the lr schedule ends: at the trainer's epoch or step limit, nowhere for a run that only time ends."""

from __future__ import annotations

import math
import re

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from tests.conftest import quiet_trainer
from wrncifar.data.synthetic import SyntheticCIFAR100DataModule
from wrncifar.models.classifier import ImageClassifier
from wrncifar.models.wideresnet import WideResNet
from wrncifar.run.config_validation import ConfigError, validate_config

NO_END = "set trainer.max_epochs or trainer.max_steps, or use a schedule that needs no end"


def tiny_net() -> WideResNet:
    return WideResNet(num_classes=10, widths=[4, 8, 8, 16])


def tiny_data(batch_size: int) -> SyntheticCIFAR100DataModule:
    """80 training images: 10 steps per epoch at batch 8, 5 at batch 16."""
    return SyntheticCIFAR100DataModule(
        num_classes=10, train_per_class=10, val_per_class=2, test_per_class=1, on_device=True, batch_size=batch_size
    )


class LearningRates(Callback):
    def __init__(self, stop_after: int | None = None) -> None:
        self.lrs: list[float] = []
        self.stop_after = stop_after

    def on_train_batch_start(self, trainer: Trainer, *args) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer: Trainer, *args) -> None:
        if self.stop_after is not None and trainer.global_step >= self.stop_after:
            trainer.should_stop = True  # as trainer.max_time would, at a step no schedule can know


@pytest.mark.parametrize("name", ["cosine", "onecycle"])
@pytest.mark.parametrize("epochs", ["-1", "null"])
def test_a_schedule_that_needs_an_end_is_refused_for_a_run_only_time_ends(make_config, name: str, epochs: str) -> None:
    overrides = [f"trainer.max_epochs={epochs}", "trainer.max_time=00:00:00:15", f"model.scheduler.name={name}"]
    with pytest.raises(ConfigError, match=f"model.scheduler.name: {name} decays .*{re.escape(NO_END)}"):
        validate_config(make_config(overrides))


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.max_epochs=-1", "trainer.max_time=00:00:00:15", "model.scheduler.name=constant"],
        ["trainer.max_epochs=-1", "trainer.max_time=00:00:00:15", "model.scheduler.name=multistep"],
        ["trainer.max_epochs=-1", "trainer.max_steps=100", "model.scheduler.name=cosine"],
        ["trainer.max_epochs=null", "model.scheduler.name=onecycle"],  # Lightning's 1000 epochs
    ],
)
def test_a_schedule_with_an_end_or_needing_none_is_accepted(make_config, overrides: list[str]) -> None:
    validate_config(make_config(overrides))


def test_a_run_without_epoch_or_step_limit_trains_with_a_schedule_that_needs_no_end() -> None:
    lrs = LearningRates(stop_after=3)
    trainer = quiet_trainer([lrs], max_epochs=-1, max_steps=-1, limit_val_batches=0)
    trainer.fit(ImageClassifier(tiny_net(), scheduler={"name": "constant"}), datamodule=tiny_data(8))
    assert lrs.lrs == [0.1] * 3


def test_a_run_without_epoch_or_step_limit_refuses_a_schedule_that_needs_an_end() -> None:
    """The backstop for a Trainer built without the config check (a Timer callback, a notebook)."""
    trainer = quiet_trainer([LearningRates(stop_after=3)], max_epochs=-1, max_steps=-1, limit_val_batches=0)
    with pytest.raises(ValueError, match=re.escape(NO_END)):
        trainer.fit(ImageClassifier(tiny_net(), scheduler={"name": "cosine"}), datamodule=tiny_data(8))


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_a_run_ended_by_max_steps_and_resumed_at_another_batch_size_ends_annealed_at_max_steps(
    tmp_path, caplog
) -> None:
    """10 steps of batch 8 (epoch 1 of 3 at that size), resumed at batch 16 with the same trainer.max_steps=30: the
    20 steps left are 4 epochs of the new size, and the cosine reaches its floor after the last of them."""
    checkpoint = tmp_path / "epoch1.ckpt"

    class SaveAndStopAfterTheFirstEpoch(Callback):
        def on_train_epoch_end(self, trainer: Trainer, pl_module: ImageClassifier) -> None:
            trainer.save_checkpoint(checkpoint)
            trainer.should_stop = True

    scheduler = {"name": "cosine", "warmup_epochs": 0, "min_lr_ratio": 0.0}
    torch.manual_seed(0)
    first = quiet_trainer([SaveAndStopAfterTheFirstEpoch()], max_epochs=-1, max_steps=30, limit_val_batches=0)
    first.fit(ImageClassifier(tiny_net(), scheduler=scheduler), datamodule=tiny_data(8))
    assert first.global_step == 10

    lrs = LearningRates()
    resumed = quiet_trainer([lrs], max_epochs=-1, max_steps=30, limit_val_batches=0)
    module = ImageClassifier(tiny_net(), scheduler=scheduler)
    with caplog.at_level("WARNING", logger="wrncifar.models.optimization"):
        resumed.fit(module, datamodule=tiny_data(16), ckpt_path=checkpoint, weights_only=True)
    reached = 0.5 * (1 + math.cos(math.pi * 10 / 30))  # a third of the way down: 0.75
    assert resumed.global_step == 30 and len(lrs.lrs) == 20
    assert lrs.lrs == pytest.approx([0.1 * reached * 0.5 * (1 + math.cos(math.pi * j / 20)) for j in range(20)])
    assert resumed.lr_scheduler_configs[0].scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    assert "now ends at epoch 5 instead of 3 (where trainer.max_steps=30 ends the run, 20 steps after step 10" in (
        caplog.text
    )
