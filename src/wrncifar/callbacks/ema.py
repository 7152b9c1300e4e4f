"""An exponential moving average of the weights, validated, checkpointed and tested in place of the raw weights."""

from __future__ import annotations

import warnings
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


class ExponentialMovingAverage(EMAWeightAveraging):
    """Lightning's `EMAWeightAveraging` (a `torch.optim.swa_utils.AveragedModel` updated after every step), which
    validates with the average and saves it as the checkpoint's `state_dict`, the raw weights and the average's
    step count beside it, so that a resumed run continues both.

    Two changes. Testing or validating a checkpoint evaluates the average it holds: Lightning's callback, still
    holding an average after `fit` in the same process (`train.py` fits, then tests the best checkpoint), would
    put the checkpoint's raw weights back into the model instead. And only the network (`net.*`) is averaged in
    the checkpoint's `state_dict`: the module's other state (`val_acc_best`) is the live one, not the copy frozen
    in the average when training began.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # The average lives on the device the model trains on. Lightning's callback puts it on the model's device at
        # `setup`, which comes before the strategy moves the model there: a GPU run's average stayed on the CPU, and
        # every step copied all the weights to it and waited. (A device given to the callback is kept.)
        given = self._device
        self._device = given if given is not None else trainer.strategy.root_device
        try:
            with warnings.catch_warnings():
                # ImageClassifier.configure_model only compiles in place; nothing is sharded that the copy could miss.
                warnings.filterwarnings("ignore", message="You're using the WeightAveraging callback with a model that")
                super().setup(trainer, pl_module, stage)
        finally:
            self._device = given

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if "current_model_state" in checkpoint:
            # The average is a deep copy of the whole module, but only the network's weights and buffers are updated
            # in it; its metric states (`val_acc_best.max_value`) stay as they were at `setup`, -inf. A run resumed
            # without the callback, or eval.py, reads the `state_dict`: it gets the live module's values.
            live = checkpoint["current_model_state"]
            checkpoint["state_dict"].update({k: v for k, v in live.items() if not k.startswith("net.")})

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
        # Otherwise the model has already loaded the checkpoint's `state_dict`: the average, the weights to evaluate.
