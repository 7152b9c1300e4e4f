from __future__ import annotations

import re

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from tests.conftest import quiet_trainer
from wrncifar.callbacks.non_finite_loss import NonFiniteLossError, StopOnNonFiniteLoss
from wrncifar.data.synthetic import SyntheticCIFAR100DataModule
from wrncifar.models.classifier import ImageClassifier
from wrncifar.models.wideresnet import WideResNet

BAD_FROM_STEP = 3


class PoisonWeights(Callback):
    """Puts a NaN into the network after a few steps, as a diverging run would."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == BAD_FROM_STEP - 1:
            with torch.no_grad():
                pl_module.net.fc.weight[0, 0] = float("nan")


def fit(tmp_path, check_every_n_steps: int) -> Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint

    dm = SyntheticCIFAR100DataModule(
        num_classes=10, train_per_class=12, test_per_class=2, val_per_class=2, batch_size=8, num_workers=0
    )
    module = ImageClassifier(WideResNet(num_classes=10, widths=[4, 8, 8, 8], blocks_per_stage=1))
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="step", monitor=None, every_n_train_steps=1)
    trainer = quiet_trainer([PoisonWeights(), StopOnNonFiniteLoss(check_every_n_steps), checkpoints], max_epochs=1)
    trainer.fit(module, datamodule=dm)
    return trainer


@pytest.mark.parametrize("check_every_n_steps", [1, 50])
def test_non_finite_loss_stops_with_step_and_lr_before_a_checkpoint_holds_it(tmp_path, check_every_n_steps) -> None:
    with pytest.raises(NonFiniteLossError, match=re.escape(f"non-finite at step {BAD_FROM_STEP} (learning rate")):
        fit(tmp_path, check_every_n_steps)
    # Checked before every save too: the newest checkpoint is the last good step, not a NaN one.
    saved = torch.load(tmp_path / "step.ckpt", weights_only=True)
    assert saved["global_step"] == BAD_FROM_STEP - 1
    weights = {k: v for k, v in saved["state_dict"].items() if k.startswith("net.") and v.is_floating_point()}
    assert weights and all(torch.isfinite(v).all() for v in weights.values())


def test_check_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="check_every_n_steps"):
        StopOnNonFiniteLoss(0)


class PoisonStatistics(Callback):
    """Overflows a BatchNorm running variance while the loss stays finite (the statistics are not in the loss)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == BAD_FROM_STEP:
            pl_module.net.block1.layer1.cbr[1].running_var.fill_(float("inf"))


def test_non_finite_buffers_stop_the_run_before_a_checkpoint_holds_them(tmp_path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    dm = SyntheticCIFAR100DataModule(
        num_classes=10, train_per_class=12, test_per_class=2, val_per_class=2, batch_size=8, num_workers=0
    )
    module = ImageClassifier(WideResNet(num_classes=10, widths=[4, 8, 8, 8], blocks_per_stage=1))
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="step", monitor=None, every_n_train_steps=1)
    trainer = quiet_trainer([PoisonStatistics(), StopOnNonFiniteLoss(50), checkpoints], max_epochs=1)
    message = f"weights or statistics became non-finite by step {BAD_FROM_STEP} (net.block1.layer1.cbr.1.running_var"
    with pytest.raises(NonFiniteLossError, match=re.escape(message)):
        trainer.fit(module, datamodule=dm)
    saved = torch.load(tmp_path / "step.ckpt", weights_only=True)
    assert saved["global_step"] == BAD_FROM_STEP - 1
    network = [v for k, v in saved["state_dict"].items() if k.startswith("net.") and v.is_floating_point()]
    assert network and all(torch.isfinite(v).all() for v in network)
