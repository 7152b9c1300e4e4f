"""The LightningModule: any image-classification network, cross-entropy (with MixUp/CutMix targets), SGD,
per-step LR schedule, metrics."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from wrncifar.data.device_batches import count_resumed_epoch
from wrncifar.models.batch_mixing import MixingSettings, build_batch_mixing
from wrncifar.models.compilation import (
    CompileScope,
    check_compile_scope,
    compile_in_place,
    network_is_compiled,
    require_compile_support,
)
from wrncifar.models.optimization import OptimizerSettings, ScheduleSettings, build_optimizer, build_scheduler

log = logging.getLogger(__name__)

# Checkpoint key of the training metrics' states summed over the processes, in a checkpoint saved mid-epoch.
EPOCH_TRAIN_METRICS = "epoch_train_metrics"


class ImageClassifier(LightningModule):
    """Trains `net` with label-smoothed cross-entropy and logs loss, top-1 and top-5 accuracy.

    Logged: `train/loss`, `train/acc`, `val/loss`, `val/acc`, `val/acc_top5`, `val/acc_best`, `test/loss`,
    `test/acc`, `test/acc_top5`. Hyperparameters saved in checkpoints are primitives only (the network's
    weights are in the state_dict, its architecture in the run's config), so checkpoints load with
    `weights_only=True`.

    Args:
        net: the network; maps a batch of images to logits.
        optimizer: keyword arguments of `OptimizerSettings` (lr, momentum, nesterov, weight_decay, …).
        scheduler: keyword arguments of `ScheduleSettings` (name, warmup_epochs, …).
        label_smoothing: cross-entropy label smoothing in [0, 1).
        mixing: keyword arguments of `MixingSettings` (mixup_alpha, cutmix_alpha, prob): MixUp/CutMix of the
            training batches. The loss then takes the mixed label distributions (smoothed as above), and
            `train/acc` counts a prediction right when it is the image's dominant class.
        num_classes: classes of the metrics; defaults to `net.num_classes`.
        channels_last: NHWC memory format for the network and its inputs (faster convolutions on tensor cores).
        compile: `torch.compile` the network when training or testing starts. It is compiled in place, so
            checkpoints keep plain parameter names and load into an uncompiled network and back.
        compile_mode: torch.compile's mode (None, "max-autotune", "reduce-overhead" for CUDA graphs, …).
        compile_scope: `network` compiles the whole network as one graph; `blocks` compiles each residual block on
            its own, blocks of one shape sharing a graph (regional compilation, `wrncifar.models.compilation`).
        compile_eval: also compile validation and test. Off by default: evaluation then runs the same network
            eagerly, which on CIFAR's 5,000 validation and 10,000 test images costs far less than compiling its
            graphs (one per batch shape) would; on for long runs over large evaluation sets.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerSettings | Mapping[str, Any] | None = None,
        scheduler: ScheduleSettings | Mapping[str, Any] | None = None,
        label_smoothing: float = 0.0,
        mixing: MixingSettings | Mapping[str, Any] | None = None,
        num_classes: int | None = None,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: str | None = None,
        compile_scope: CompileScope = "network",
        compile_eval: bool = False,
    ) -> None:
        super().__init__()
        for name, flag in (("channels_last", channels_last), ("compile", compile)):
            if not isinstance(flag, bool):  # "auto" is the run layer's to decide (wrncifar.run.speed)
                raise ValueError(f"{name} must be true or false here, got {flag!r} (the entry points resolve auto)")
        if compile:
            require_compile_support()
        check_compile_scope(net, compile_scope)
        self.optimizer_settings = _settings(OptimizerSettings, optimizer)
        self.schedule_settings = _settings(ScheduleSettings, scheduler)
        self.mixing_settings = _settings(MixingSettings, mixing)
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        num_classes = num_classes or getattr(net, "num_classes", None)
        if not num_classes:
            raise ValueError("num_classes is needed when the network has no num_classes attribute")
        self.save_hyperparameters(
            {
                "optimizer": asdict(self.optimizer_settings),
                "scheduler": asdict(self.schedule_settings),
                "label_smoothing": label_smoothing,
                "mixing": asdict(self.mixing_settings),
                "num_classes": num_classes,
            }
        )
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.channels_last = channels_last
        # Not `self.compile`: that would hide nn.Module.compile.
        self.compile_network = compile
        self.compile_mode = compile_mode
        self.compile_scope = compile_scope
        self.compile_eval = compile_eval
        # Filled from the datamodule's `classes` at setup, for loggers and callbacks that show class names.
        self.class_names: tuple[str, ...] = ()
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        # (images, labels) → (mixed images, label distributions); None without mixing. It has no parameters or
        # buffers: checkpoints are the same with and without it.
        self.batch_mixing = build_batch_mixing(self.mixing_settings, num_classes)

        # Metrics accumulate on the device with no host sync per step: torchmetrics' NaN check (`.any()`) and
        # label validation (`torch.unique`) would each wait for the GPU. Labels are checked where data is loaded.
        self.train_loss, self.val_loss, self.test_loss = (MeanMetric(nan_strategy="disable") for _ in range(3))
        self.train_acc, self.val_acc, self.test_acc = (accuracy(num_classes, top_k=1) for _ in range(3))
        top5 = min(5, num_classes)
        self.val_acc_top5, self.test_acc_top5 = (accuracy(num_classes, top_k=top5) for _ in range(2))
        # Persistent: saved in checkpoints, so a resumed run keeps the best accuracy of the epochs before it.
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)
        # What a mid-epoch checkpoint saved of its epoch's training metrics (EPOCH_TRAIN_METRICS), until it resumes.
        self._resumed_epoch_metrics: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def configure_model(self) -> None:
        # After the callbacks' setup (which may count the network's FLOPs) and before the first step.
        if self.compile_network and not network_is_compiled(self.net, self.compile_scope):
            require_compile_support(self.trainer.strategy.root_device)
            compile_in_place(self.net, self.compile_scope, self.compile_mode)

    def _epoch_train_metrics(self) -> dict[str, Metric]:
        """The metrics of `train/loss` and `train/acc`: every state a sum (a mean's sum and count, accuracy's
        counts), so that the states of several processes add up and a process's may be restored alone."""
        return {"train_loss": self.train_loss, "train_acc": self.train_acc}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint saved mid-epoch (a step or signal checkpoint) keeps the epoch's training metrics so far,
        summed over the processes (every process saves, in step), so that the resumed run logs the whole epoch's
        train/loss and train/acc, not only its own steps'. One saved at an epoch's end has none to keep."""
        trainer = self._trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        epochs = trainer.fit_loop.epoch_progress.current
        # An epoch's last batch, or training ended part-way by `trainer.max_steps` (Lightning counts that epoch as
        # processed, and a resume starts the next one): no epoch to continue.
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch or epochs.processed > epochs.completed:
            return
        states = {
            name: {
                state: trainer.strategy.reduce(value.detach().clone(), reduce_op="sum").cpu()
                for state, value in metric.metric_state.items()
            }
            for name, metric in self._epoch_train_metrics().items()
        }
        checkpoint[EPOCH_TRAIN_METRICS] = {"epoch": trainer.current_epoch, "states": states}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resumed with other training settings: this config's take effect from the checkpoint on, and the log says
        which changed. The optimizer state in the checkpoint would bring back the old momentum, Nesterov flag and
        weight decay, so they are replaced here before Lightning restores it; the lr follows from the schedule
        (`EpochSchedule` keeps this config's base lr)."""
        saved = checkpoint.get("hyper_parameters") or {}
        changes = [
            f"model.{key}: {saved[key]} → {self.hparams[key]}"
            for key in ("optimizer", "scheduler", "label_smoothing", "mixing")
            if key in saved and _plain(saved[key]) != _plain(self.hparams[key])
        ]
        if changes:
            log.warning(
                "Resumed at step %s with other settings than the checkpoint's; from here on: %s",
                checkpoint.get("global_step"),
                "; ".join(changes),
            )
        settings = self.optimizer_settings
        decays = [settings.weight_decay] if settings.decay_norm_and_bias else [settings.weight_decay, 0.0]
        for state in checkpoint.get("optimizer_states") or []:
            groups = state.get("param_groups", [])
            if len(groups) != len(decays):
                raise ValueError(
                    f"the checkpoint's optimizer has {len(groups)} parameter group(s), this config's {len(decays)}: "
                    "resume with the run's model.optimizer.decay_norm_and_bias, or start a new run from the "
                    "checkpoint's weights"
                )
            for group, weight_decay in zip(groups, decays, strict=True):
                group.update(momentum=settings.momentum, nesterov=settings.nesterov, weight_decay=weight_decay)
        self._resumed_epoch_metrics = checkpoint.get(EPOCH_TRAIN_METRICS)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        self.class_names = tuple(getattr(datamodule, "classes", ()))
        if self.class_names:
            for logger in self.loggers:
                logger.log_hyperparams({"data/classes": list(self.class_names)})

    def on_train_start(self) -> None:
        count_resumed_epoch(self.trainer)  # a mid-epoch resume with another batch size trains the epoch's rest
        # Resumed from a mid-epoch checkpoint: the epoch's training metrics continue from the checkpoint's (on rank 0,
        # which holds the sums of all processes; the others start from zero).
        saved, self._resumed_epoch_metrics = self._resumed_epoch_metrics, None
        this_epoch = isinstance(saved, Mapping) and saved.get("epoch") == self.current_epoch
        if not this_epoch or not self.trainer.is_global_zero:
            return
        for name, metric in self._epoch_train_metrics().items():
            states = _mapping(_mapping(saved.get("states")).get(name))
            for state, current in metric.metric_state.items():  # the metric's own states only: the file is data
                value = states.get(state)
                if isinstance(value, torch.Tensor) and value.shape == current.shape:
                    setattr(metric, state, value.to(device=current.device, dtype=current.dtype))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        targets: torch.Tensor = labels
        if self.batch_mixing is not None:
            images, targets = self.batch_mixing(images, labels)
            labels = targets.argmax(dim=1)  # each mixed image's dominant class, for train/acc
        logits = self(images)
        loss = self.criterion(logits, targets)  # class indices or distributions; smoothing applies to both
        # update(), not forward(): the epoch values are all that is logged, so no per-batch value is computed. The
        # batch's mean loss counts once per image, so a smaller last batch (`drop_last=false`) weighs less (repeated,
        # not `weight=`: MeanMetric with nan_strategy="disable" ignores weights, torchmetrics 1.9).
        self.train_loss.update(loss.detach().expand(images.shape[0]))
        self.train_acc.update(logits.detach(), labels)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_loss, self.val_acc, self.val_acc_top5)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a few batches of an untrained model are not an epoch
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_loss, self.test_acc, self.test_acc_top5)

    def _evaluate(
        self,
        batch: tuple[torch.Tensor, torch.Tensor],
        split: str,
        loss_metric: MeanMetric,
        acc: MulticlassAccuracy,
        acc_top5: MulticlassAccuracy,
    ) -> None:
        images, labels = batch
        with self._evaluation_compilation():
            logits = self(images)
        # Per-image losses: their mean over the epoch weighs every image alike, whatever the batch sizes. Plain
        # cross-entropy (no label smoothing, which is a training device): the model's own negative log-likelihood,
        # comparable across runs with any smoothing, and the evaluation report's `loss`.
        losses = nn.functional.cross_entropy(logits, labels, reduction="none")
        loss_metric.update(losses)
        acc.update(logits, labels)
        acc_top5.update(logits, labels)
        self.log(f"{split}/loss", loss_metric, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{split}/acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{split}/acc_top5", acc_top5, on_step=False, on_epoch=True)

    def _evaluation_compilation(self) -> AbstractContextManager[Any]:
        """The compiled network as it is (`compile_eval`), or run eagerly (PyTorch 2.6+ can say so; before it, the
        evaluation is compiled too)."""
        set_stance = getattr(torch.compiler, "set_stance", None)
        if not self.compile_network or self.compile_eval or set_stance is None:
            return nullcontext()
        return set_stance("force_eager")

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self, self.optimizer_settings)
        trainer = self.trainer
        # Lightning's limits: -1 (max_epochs also None) for none. With neither, only time (or a callback) ends the
        # run: `estimated_stepping_batches` is then infinite, and the schedule must need no end.
        epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
        max_steps = trainer.max_steps if trainer.max_steps not in (None, -1) else None
        trainer.fit_loop.setup_data()  # as `estimated_stepping_batches` does
        batches = trainer.num_training_batches
        if math.isfinite(batches) and batches > 0:
            # The loader's epoch, not `total_steps / max_epochs`: `trainer.max_steps` may end the run sooner.
            steps_per_epoch = float(math.ceil(batches / trainer.accumulate_grad_batches))
        else:  # a loader without a length: the run's epochs are its measure
            total = trainer.estimated_stepping_batches
            steps_per_epoch = total / epochs if epochs and epochs > 0 else float(total)
        # The epoch limit in steps (at least one epoch, as Lightning estimates); max_steps counts resumed steps too.
        epoch_limit = steps_per_epoch * max(epochs, 1) if epochs is not None else math.inf
        scheduler = build_scheduler(optimizer, self.schedule_settings, epoch_limit, steps_per_epoch, max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def accuracy(num_classes: int, top_k: int) -> MulticlassAccuracy:
    return MulticlassAccuracy(num_classes, top_k=top_k, average="micro", validate_args=False)


def _plain(value: Any) -> Any:
    """`value` with tuples as lists, for comparing hyperparameters saved in a checkpoint with the current ones."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _settings(cls: type, value: object) -> Any:
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls(**value)
    raise TypeError(f"expected {cls.__name__} or a mapping of its fields, got {type(value).__name__}")


def _mapping(value: Any) -> Mapping[str, Any]:
    """`value` if it is a mapping (read from a checkpoint, it may be anything), else an empty one."""
    return value if isinstance(value, Mapping) else {}
