"""Evaluate a checkpoint on the test set from a composed Hydra config."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from omegaconf import DictConfig, OmegaConf, open_dict

from wrncifar.config_validation import ConfigError, check_num_classes, validate_config
from wrncifar.instantiation import instantiate_group
from wrncifar.run_metrics import metrics_as_floats

log = logging.getLogger(__name__)

# Groups taken from the training run's saved config, so `eval.py ckpt_path=…` rebuilds the same network
# and data source without repeating the training overrides.
RUN_GROUPS = ("model", "data")
# How far above a checkpoint its run's `.hydra/` folder may be (<run>/checkpoints/x.ckpt, <run>/csv/…/x.ckpt).
RUN_DIR_DEPTH = 4


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
    """The config Hydra saved for the run that wrote `ckpt_path`: the nearest `.hydra/config.yaml` above it."""
    for folder in list(ckpt_path.resolve().parents)[:RUN_DIR_DEPTH]:
        saved = folder / ".hydra" / "config.yaml"
        if saved.is_file():
            return OmegaConf.load(saved)  # type: ignore[return-value]
    return None


def adopt_training_run_config(cfg: DictConfig, ckpt_path: Path) -> None:
    """Use the training run's `model` and `data` configs, then re-apply this command line's overrides of them.

    `model=…` / `data=…` on this command line keep this config's choice; `data.eval_batch_size=64` and the like
    are applied on top of the run's config.
    """
    run_cfg = training_run_config(ckpt_path)
    if run_cfg is None:
        return
    overrides = OverridesParser.create().parse_overrides(
        list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    )
    for group in RUN_GROUPS:
        if group not in run_cfg or any(o.key_or_group == group for o in overrides):
            continue
        with open_dict(cfg):
            cfg[group] = run_cfg[group]
            for o in overrides:
                if o.key_or_group.startswith(f"{group}.") and not o.is_delete():
                    OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True, force_add=True)
        log.info("Using the %s config of the training run that wrote %s", group, ckpt_path)
