"""W&B media: sample validation predictions as a table, and the test set's confusion matrix and per-class accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from torchmetrics.classification import MulticlassConfusionMatrix

from wrncifar.data.transforms import CIFAR100_MEAN, CIFAR100_STD

PREDICTION_COLUMNS = ["image", "true class", "predicted class", "confidence"]


class WandbMedia(Callback):
    """Every `every_n_val_epochs` validation epochs, a table `val/predictions` of the first `num_samples`
    validation images with their true class, predicted class and confidence; at the end of testing,
    `test/confusion_matrix` and `test/per_class_accuracy` (a bar chart of a table). Classes by name.

    Does nothing without a WandbLogger. Predictions are read from the module's own forward passes (a forward hook),
    so no image is run twice. Under DDP every rank counts its test predictions and global rank 0 logs the total.

    Args:
        every_n_val_epochs: validation epochs between prediction tables (the Nth, 2Nth, … validation).
        num_samples: images per prediction table.
        mean, std: the per-channel normalisation of the images, undone to show them; None: the datamodule's
            dataset's (`release`), else CIFAR-100's.
    """

    def __init__(
        self,
        every_n_val_epochs: int = 5,
        num_samples: int = 32,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        for name, value in [("every_n_val_epochs", every_n_val_epochs), ("num_samples", num_samples)]:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.every_n_val_epochs = every_n_val_epochs
        self.num_samples = num_samples
        self._given = (mean, std)
        self.mean = self.std = torch.empty(0)
        self._logger: WandbLogger | None = None
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._logits: torch.Tensor | None = None
        self._confusion: MulticlassConfusionMatrix | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        release = getattr(trainer.datamodule, "release", None)
        mean, std = self._given
        mean = mean or (release.mean if release else CIFAR100_MEAN)
        std = std or (release.std if release else CIFAR100_STD)
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

    # Validation: a table of the first batch's first images.

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._table_due(trainer):
            self._capture(pl_module)

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        if self._logits is None or batch_idx != 0:
            return
        images, labels = batch[0][: self.num_samples], batch[1][: self.num_samples]
        probs = self._logits[: self.num_samples].float().softmax(dim=1)
        self._release()
        confidence, predicted = probs.max(dim=1)
        names = _class_names(pl_module, probs.shape[1])
        rows = [
            [_wandb().Image(image), names[true], names[pred], round(conf, 4)]
            for image, true, pred, conf in zip(
                self._displayable(images), labels.tolist(), predicted.tolist(), confidence.tolist(), strict=True
            )
        ]
        self._logger.log_table("val/predictions", columns=PREDICTION_COLUMNS, data=rows, step=trainer.global_step)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._release()

    # Test: every prediction counted into a confusion matrix.

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._logger is None:
            return
        num_classes = pl_module.hparams.get("num_classes") or len(pl_module.class_names)
        self._confusion = MulticlassConfusionMatrix(num_classes, validate_args=False).to(pl_module.device)
        self._capture(pl_module)

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        if self._confusion is not None and self._logits is not None:
            self._confusion.update(self._logits.argmax(dim=1), batch[1])
            self._logits = None

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._confusion is None:
            return
        self._release()
        counts = self._confusion.compute().cpu().numpy()  # summed over the ranks under DDP
        self._confusion = None
        if trainer.is_global_zero:
            self._log_test_media(trainer, counts, _class_names(pl_module, len(counts)))

    def _log_test_media(self, trainer: Trainer, counts: np.ndarray, names: list[str]) -> None:
        wandb = _wandb()
        true, predicted = np.nonzero(counts)
        repeats = counts[true, predicted]
        confusion = wandb.plot.confusion_matrix(
            y_true=np.repeat(true, repeats).tolist(),
            preds=np.repeat(predicted, repeats).tolist(),
            class_names=names,
            title="Test confusion matrix",
        )
        images = counts.sum(axis=1)
        accuracy = np.diag(counts) / np.maximum(images, 1)
        rows = [[name, float(acc), int(n)] for name, acc, n in zip(names, accuracy, images, strict=True) if n]
        table = wandb.Table(columns=["class", "accuracy", "images"], data=rows)
        per_class = wandb.plot.bar(table, "class", "accuracy", title="Test accuracy per class")
        media = {"test/confusion_matrix": confusion, "test/per_class_accuracy": per_class}
        self._logger.log_metrics(media, step=trainer.global_step)

    # Reading the module's outputs.

    def _table_due(self, trainer: Trainer) -> bool:
        if self._logger is None or trainer.sanity_checking or not trainer.is_global_zero:
            return False
        validation = (trainer.current_epoch + 1) // (trainer.check_val_every_n_epoch or 1)
        return validation > 0 and validation % self.every_n_val_epochs == 0

    def _capture(self, pl_module: LightningModule) -> None:
        def keep(module: torch.nn.Module, args: Any, output: Any) -> None:
            # Strategies such as DDP route `validation_step` itself through the module's forward: its output (None,
            # or a loss) passes here after the logits and is not logits.
            if isinstance(output, torch.Tensor) and output.ndim == 2:
                self._logits = output.detach()

        self._release()
        self._hook = pl_module.register_forward_hook(keep)

    def _release(self) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook, self._logits = None, None

    def _displayable(self, images: torch.Tensor) -> np.ndarray:
        """Normalised CHW float images → HWC uint8."""
        images = images.detach().float().cpu() * self.std + self.mean
        return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _class_names(pl_module: LightningModule, num_classes: int) -> list[str]:
    names = list(getattr(pl_module, "class_names", ()) or ())
    return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


def _wandb() -> Any:
    import wandb

    return wandb
