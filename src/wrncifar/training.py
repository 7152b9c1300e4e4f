"""Train from a composed Hydra config: instantiate, fit, test the best checkpoint, report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf, open_dict

from wrncifar.checkpointing import check_compatible, load_checkpoint
from wrncifar.config_validation import check_num_classes, validate_config
from wrncifar.distributed import check_launch
from wrncifar.instantiation import instantiate_group
from wrncifar.resuming import checkpoint_to_resume, wandb_run_id
from wrncifar.run_metrics import metrics_as_floats, optimized_metric_value
from wrncifar.sweep_summary import in_multirun
from wrncifar.tracking import command_line_overrides, git_state, sweep_group_and_name, without_secrets

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit `cfg.model` on `cfg.data` and, if `cfg.test`, test the best checkpoint. Returns the final metrics.

    With `train=false test=true ckpt_path=…` it only tests that checkpoint.
    """
    validate_config(cfg)
    if cfg.get("seed") is not None:
        seed_everything(cfg.seed, workers=True)
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(cfg.matmul_precision)

    resume_from = checkpoint_to_resume(cfg)  # checked before anything is built: a bad path fails at once
    datamodule: LightningDataModule = instantiate(cfg.data)
    model: LightningModule = instantiate(cfg.model)
    check_num_classes(model, datamodule)
    if resume_from is not None:
        check_compatible(model, load_checkpoint(resume_from), resume_from)
    if cfg.get("resume"):
        keep_wandb_run(cfg)
    group_sweep_jobs(cfg)
    loggers = instantiate_group(cfg.get("logger"))
    callbacks = _without_logger_only_callbacks(instantiate_group(cfg.get("callbacks")), has_logger=bool(loggers))
    trainer: Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    check_launch(trainer, multirun=in_multirun(), sync_batchnorm=bool(cfg.trainer.get("sync_batchnorm")))
    log_run_config(trainer, cfg, model)

    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    metrics = metrics_as_floats(trainer.callback_metrics)

    if cfg.get("test", True):
        ckpt_path = _checkpoint_to_test(trainer, cfg)
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics |= metrics_as_floats(trainer.callback_metrics)

    log.info("Outputs: %s", cfg.paths.output_dir)
    return metrics


def train_for_sweep(cfg: DictConfig) -> float | None:
    """`train`, then the value of `cfg.optimized_metric` (what Hydra sweepers read); None when only testing."""
    metrics = train(cfg)
    if not cfg.get("train", True) and cfg.get("optimized_metric") not in metrics:
        return None
    return optimized_metric_value(metrics, cfg.get("optimized_metric"))


def log_run_config(trainer: Trainer, cfg: DictConfig, model: LightningModule) -> None:
    """Send the resolved config, the command-line overrides, the git commit (and whether the work tree differs
    from it) and the parameter counts to every logger. A W&B API key the config interpolates is redacted."""
    if not trainer.loggers:
        return
    hparams: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    hparams["overrides"] = command_line_overrides()
    hparams["git"] = git_state(Path(__file__).parent)
    hparams["model/params/total"] = sum(p.numel() for p in model.parameters())
    hparams["model/params/trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    hparams = without_secrets(hparams)
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)


def keep_wandb_run(cfg: DictConfig) -> None:
    """A resumed run logs to the W&B run it started, unless `logger.wandb.id` names another."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None or wandb_cfg.get("id"):
        return
    run_id = wandb_run_id(Path(cfg.paths.output_dir))
    if run_id:
        with open_dict(wandb_cfg):
            wandb_cfg.id = run_id
            wandb_cfg.resume = "allow"


def group_sweep_jobs(cfg: DictConfig) -> None:
    """In a Hydra multirun, the W&B runs of one sweep share a group (the sweep's id) and each is named by the
    overrides the sweep varies, unless `logger.wandb.group` / `logger.wandb.name` are set."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    names = sweep_group_and_name() if wandb_cfg is not None else None
    if names is None:
        return
    with open_dict(wandb_cfg):
        wandb_cfg.group = wandb_cfg.get("group") or names[0]
        wandb_cfg.name = wandb_cfg.get("name") or names[1]


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
