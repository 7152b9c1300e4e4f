"""The orchestration of a training run from its composed Hydra config: check the config, instantiate data, model,
loggers, callbacks and trainer, fit, test the best checkpoint, and return the metrics a sweep reads.

The training step itself is `wrncifar.models.classifier.ImageClassifier.training_step`."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig
from torchmetrics import MaxMetric

from wrncifar.callbacks.start_up import phase_done
from wrncifar.run.checkpoints import check_compatible, checkpoints_written, load_checkpoint, load_network_weights
from wrncifar.run.config_validation import ConfigError, check_num_classes, validate_config
from wrncifar.run.console import quiet_console
from wrncifar.run.distributed import check_launch, stop_if_group_does_not_form
from wrncifar.run.extras import apply_extras
from wrncifar.run.loggers import CSVLogger
from wrncifar.run.resuming import check_not_finished, checkpoint_to_resume
from wrncifar.run.speed import resolve_speed, use_compile_cache
from wrncifar.run.tracking import continue_tensorboard, group_sweep_jobs, keep_wandb_run, log_run_config
from wrncifar.sweeps.summary import in_multirun

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit `cfg.model` on `cfg.data` and, if `cfg.test`, test the best checkpoint. Returns the final metrics.

    With `train=false test=true ckpt_path=…` it only tests that checkpoint.
    """
    quiet_console()
    resolve_speed(cfg, training=cfg.get("train", True))  # the `auto` speed settings, before they are checked
    validate_config(cfg)
    use_compile_cache(cfg)
    apply_extras(cfg)  # the config tree is printed once it is known to be valid: an error comes first
    if cfg.get("seed") is not None:
        seed_everything(cfg.seed, workers=True)
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(cfg.matmul_precision)

    resume_from = checkpoint_to_resume(cfg)  # checked before anything is built: a bad path fails at once
    datamodule: LightningDataModule = instantiate(cfg.data)
    model: LightningModule = instantiate(cfg.model)
    check_num_classes(model, datamodule)
    if cfg.get("init_from"):
        if resume_from is not None:
            raise ConfigError(
                "init_from starts a new run from a checkpoint's network weights, resume/ckpt_path continue a run: "
                "give one of them"
            )
        load_network_weights(model.net, Path(str(cfg.init_from)))
        log.info("Starting from the network weights of %s (new optimizer and schedule)", cfg.init_from)
    # The step training continues from: loggers drop what an earlier process of this run logged after it.
    continue_at = None
    trained_already = False
    if resume_from is not None:
        checkpoint = load_checkpoint(resume_from)
        check_compatible(model, checkpoint, resume_from)
        continue_at = int(checkpoint.get("global_step", 0)) if cfg.get("train", True) else None
        if cfg.get("train", True):
            trained_already = check_not_finished(
                checkpoint, resume_from, cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps")
            )
    if continue_at is not None:
        continue_tensorboard(cfg, continue_at)
    if cfg.get("resume"):
        keep_wandb_run(cfg)
    group_sweep_jobs(cfg)
    loggers = instantiate_group(cfg.get("logger"))
    if continue_at is not None:
        for logger in loggers:
            if isinstance(logger, CSVLogger):
                logger.rewind(continue_at)
    callbacks = _without_logger_only_callbacks(instantiate_group(cfg.get("callbacks")), has_logger=bool(loggers))
    if cfg.get("optimized_metric"):
        callbacks.append(OptimizedMetricCheck(str(cfg.optimized_metric)))
    trainer: Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if resume_from is not None:  # the validation code ran when the run started: a resume goes straight to training
        trainer.num_sanity_val_steps = 0
    check_launch(
        trainer,
        multirun=in_multirun(),
        sync_batchnorm=bool(cfg.trainer.get("sync_batchnorm")),
        oversubscribe=bool(cfg.get("allow_oversubscription")),
    )
    log_run_config(trainer, cfg, model)
    stop_if_group_does_not_form(trainer, float(cfg.get("distributed_start_timeout_s", 300)))

    if cfg.get("train", True):
        phase_done("set-up")
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    metrics = metrics_as_floats(trainer.callback_metrics)
    if trained_already:  # nothing was trained, so nothing validated: the best validation accuracy is the restored one
        metrics |= restored_best_accuracy(model)

    if cfg.get("test", True):
        checkpoints_written(trainer)  # DDP: no process reads the best checkpoint before rank 0 has written it
        ckpt_path = _checkpoint_to_test(trainer, cfg)
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics |= metrics_as_floats(trainer.callback_metrics)

    log.info("Outputs: %s", cfg.paths.output_dir)
    return metrics


def restored_best_accuracy(model: LightningModule) -> dict[str, float]:
    """`val/acc_best` as the checkpoint restored it into `model`; none if that run never validated."""
    best = getattr(model, "val_acc_best", None)
    if not isinstance(best, MaxMetric):
        return {}
    value = float(best.max_value)  # MaxMetric's state: -inf until its first update
    return {"val/acc_best": value} if math.isfinite(value) else {}


def train_for_sweep(cfg: DictConfig) -> float | None:
    """`train`, then the value of `cfg.optimized_metric` (what Hydra sweepers read); None when only testing."""
    metrics = train(cfg)
    if not cfg.get("train", True) and cfg.get("optimized_metric") not in metrics:
        return None
    return optimized_metric_value(metrics, cfg.get("optimized_metric"))


def _without_logger_only_callbacks(callbacks: list[Callback], has_logger: bool) -> list[Callback]:
    """Drop callbacks that refuse to run without a logger (LearningRateMonitor) when logging is off."""
    if has_logger:
        return callbacks
    kept = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if len(kept) < len(callbacks):
        log.info("No logger: the learning-rate monitor is switched off.")
    return kept


def _checkpoint_to_test(trainer: Trainer, cfg: DictConfig) -> str | None:
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        log.info("Testing the best checkpoint: %s", best)
        return best
    if not cfg.get("train", True) and cfg.get("ckpt_path"):
        return str(cfg.ckpt_path)
    log.warning("No checkpoint was saved: testing the weights as they are now.")
    return None


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """The objects of a config group whose entries are named configs (`model_checkpoint: {_target_: …}`):
    the `callbacks` and `logger` groups."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if isinstance(entry, DictConfig) and "_target_" in entry]


def metrics_as_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """`trainer.callback_metrics` (tensors) as plain floats."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, torch.Tensor | int | float)}


def optimized_metric_value(metrics: Mapping[str, float], name: str | None) -> float | None:
    """The value a sweep optimises; a clear error when the run did not produce it."""
    if not name:
        return None
    if name not in metrics:
        raise ConfigError(f"optimized_metric {name!r} was not logged; logged metrics: {', '.join(sorted(metrics))}")
    value = metrics[name]
    log.info("%s = %s", name, value)
    if not math.isfinite(value):
        raise NonFiniteMetricError(
            f"optimized_metric {name} is {value}: the run diverged (try a lower model.optimizer.lr); "
            "a sweep counts this job as failed"
        )
    return value


class OptimizedMetricCheck(Callback):
    """Stop a run whose `optimized_metric` names a metric it does not log (`val/accc`) at the start of its second
    epoch in this process, rather than after all of them: a sweep with a typo would otherwise spend every job's
    whole budget before the first one failed. Checked once the stage that logs the metric has run in this process
    (validation for `val/…`, a training epoch for the others); `test/…` metrics are left to the end of the run."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.validated = self.trained_an_epoch = self.checked = False

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.validated = self.validated or not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.trained_an_epoch = True

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        stage = self.name.split("/")[0]
        if self.checked or not self.trained_an_epoch or stage == "test" or (stage == "val" and not self.validated):
            return
        self.checked = True
        logged = trainer.callback_metrics
        if self.name not in logged:
            raise ConfigError(
                f"optimized_metric {self.name!r} is not among the metrics this run logs ({', '.join(sorted(logged))}): "
                "fix its name (optimized_metric=…); stopped after the first epoch"
            )


class NonFiniteMetricError(RuntimeError):
    """The metric a sweep optimises is NaN or infinite: no value to compare, the job failed."""
