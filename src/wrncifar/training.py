"""Train from a composed Hydra config: instantiate, fit, test the best checkpoint, report."""

from __future__ import annotations

import logging
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.pytorch import LightningDataModule, LightningModule, Trainer, seed_everything
from omegaconf import DictConfig, OmegaConf

from wrncifar.config_validation import ConfigError, validate_config
from wrncifar.instantiation import instantiate_group

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit `cfg.model` on `cfg.data` and, if `cfg.test`, test the best checkpoint. Returns the final metrics."""
    validate_config(cfg)
    if cfg.get("seed") is not None:
        seed_everything(cfg.seed, workers=True)
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(cfg.matmul_precision)

    datamodule: LightningDataModule = instantiate(cfg.data)
    model: LightningModule = instantiate(cfg.model)
    check_num_classes(model, datamodule)
    trainer: Trainer = instantiate(
        cfg.trainer,
        callbacks=instantiate_group(cfg.get("callbacks")),
        logger=instantiate_group(cfg.get("logger")) or False,
    )
    log_run_config(trainer, cfg, model)

    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    metrics = metrics_as_floats(trainer.callback_metrics)

    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            log.warning("No best checkpoint was saved: testing the weights as they are now.")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics |= metrics_as_floats(trainer.callback_metrics)
        if best:
            log.info("Best checkpoint: %s", best)

    log.info("Outputs: %s", cfg.paths.output_dir)
    return metrics


def check_num_classes(model: LightningModule, datamodule: LightningDataModule) -> None:
    """Fail before any data is read when the model's outputs and the dataset's classes disagree."""
    model_classes = model.hparams.get("num_classes")
    data_classes = getattr(datamodule, "num_classes", None)
    if model_classes and data_classes and model_classes != data_classes:
        raise ConfigError(
            f"the model predicts {model_classes} classes but the dataset has {data_classes}: "
            f"set model.net.num_classes={data_classes}"
        )


def log_run_config(trainer: Trainer, cfg: DictConfig, model: LightningModule) -> None:
    """Send the resolved config and the parameter counts to every logger."""
    if not trainer.loggers:
        return
    hparams: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    hparams["model/params/total"] = sum(p.numel() for p in model.parameters())
    hparams["model/params/trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)


def optimized_metric_value(metrics: dict[str, float], name: str | None) -> float | None:
    """The value a sweep optimises; a clear error when the run did not produce it."""
    if not name:
        return None
    if name not in metrics:
        available = ", ".join(sorted(metrics))
        raise ConfigError(f"optimized_metric {name!r} was not logged; logged metrics: {available}")
    value = metrics[name]
    log.info("%s = %s", name, value)
    return value


def metrics_as_floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, torch.Tensor | int | float)}
