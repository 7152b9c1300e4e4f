"""Evaluate a checkpoint on the test set from a composed Hydra config."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from omegaconf import DictConfig, OmegaConf, open_dict

from wrncifar.config_validation import ConfigError, validate_config
from wrncifar.instantiation import instantiate_group
from wrncifar.training import check_num_classes, metrics_as_floats

log = logging.getLogger(__name__)

# Groups taken from the training run's saved config, so `eval.py ckpt_path=…` rebuilds the same network
# and data source without repeating the training overrides.
RUN_GROUPS = ("model", "data")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test `cfg.ckpt_path`; writes `test_metrics.json` to the output directory and returns the metrics."""
    given = cfg.get("ckpt_path")
    if not given:
        raise ConfigError("ckpt_path is required: python src/eval.py ckpt_path=<run_dir>/checkpoints/<name>.ckpt")
    ckpt_path = Path(str(given))
    if not ckpt_path.is_file():
        raise ConfigError(f"ckpt_path={given} is not a file: pass ckpt_path=<run_dir>/checkpoints/<name>.ckpt")
    adopt_training_run_config(cfg, ckpt_path)
    validate_config(cfg)

    datamodule: LightningDataModule = instantiate(cfg.data)
    model: LightningModule = instantiate(cfg.model)
    check_num_classes(model, datamodule)
    trainer: Trainer = instantiate(cfg.trainer, logger=instantiate_group(cfg.get("logger")) or False)
    trainer.test(model, datamodule=datamodule, ckpt_path=str(ckpt_path), weights_only=True)

    metrics = metrics_as_floats(trainer.callback_metrics)
    out = Path(cfg.paths.output_dir) / "test_metrics.json"
    out.write_text(json.dumps({"ckpt_path": str(ckpt_path.resolve()), **metrics}, indent=2) + "\n")
    log.info("Test metrics written to %s", out)
    return metrics


def training_run_config(ckpt_path: Path) -> DictConfig | None:
    """The config saved by Hydra for the run that wrote `<run_dir>/checkpoints/<name>.ckpt`, if present."""
    saved = ckpt_path.resolve().parent.parent / ".hydra" / "config.yaml"
    return OmegaConf.load(saved) if saved.is_file() else None  # type: ignore[return-value]


def adopt_training_run_config(cfg: DictConfig, ckpt_path: Path) -> None:
    """Use the training run's `model` and `data` configs unless this command line overrides them."""
    run_cfg = training_run_config(ckpt_path)
    if run_cfg is None:
        return
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    for group in RUN_GROUPS:
        overridden = any(o.lstrip("+~").split("=")[0].split(".")[0] == group for o in overrides)
        if group in run_cfg and not overridden:
            with open_dict(cfg):
                cfg[group] = run_cfg[group]
            log.info("Using %s config of the training run (%s)", group, ckpt_path.parent.parent)
