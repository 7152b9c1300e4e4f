"""The sizes of the training, validation and test sets, sent to every logger with the run's config."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer

# The datamodule attribute that holds each split once it is set up.
SPLITS = {"train": "train_set", "val": "val_set", "test": "test_set"}


class DatasetSizes(Callback):
    """Logs `data/size/train`, `data/size/val` and `data/size/test` (images) as hyperparameters, once the
    datamodule is set up (callbacks' `setup` runs after the datamodule's)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        sizes = {
            f"data/size/{split}": len(dataset)
            for split, attribute in SPLITS.items()
            if (dataset := getattr(datamodule, attribute, None)) is not None
        }
        if sizes:
            for logger in trainer.loggers:
                logger.log_hyperparams(sizes)
