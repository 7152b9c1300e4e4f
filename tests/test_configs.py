"""Every config option composes, passes validation and instantiates; bad overrides fail before any data is read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Timer

from tests.conftest import CONFIGS, FEW_IMAGES, read_metrics, run_entry
from wrncifar.run.config_validation import ConfigError, validate_config
from wrncifar.run.entry import run
from wrncifar.run.fit_and_test import instantiate_group, train_for_sweep
from wrncifar.run.speed import Hardware, resolve_speed

# Trainer options made for GPUs are instantiated on the CPU here; everything else in them is kept.
ON_CPU = ["trainer.accelerator=cpu", "trainer.devices=1"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_every_group_has_the_documented_options() -> None:
    assert {"cifar100", "synthetic"} <= set(options("data"))
    assert {"wrn", "wrn_tiny"} <= set(options("model"))
    assert {"default", "cpu", "gpu", "mps", "ddp", "ddp_cpu"} <= set(options("trainer"))
    assert {"csv", "tensorboard", "wandb", "many_loggers"} <= set(options("logger"))
    assert {"default", "none", "early_stopping"} <= set(options("callbacks"))
    assert {"fdr", "limit", "overfit", "profiler"} <= set(options("debug"))
    assert "wrn_cifar100" in options("experiment")


@pytest.mark.parametrize("option", options("data"))
def test_data_options_instantiate(make_config, option: str) -> None:
    cfg = make_config([f"data={option}"])
    validate_config(cfg)
    assert isinstance(instantiate(cfg.data), LightningDataModule)


@pytest.mark.parametrize("option", options("model"))
def test_model_options_instantiate(make_config, option: str) -> None:
    cfg = make_config([f"model={option}"])
    validate_config(cfg)
    model = instantiate(cfg.model)
    assert isinstance(model, LightningModule)
    assert model.hparams.num_classes == 100


def test_model_config_nests_the_network_under_net(make_config) -> None:
    model = instantiate(make_config(["model=wrn", "model.net.widths=[8,16,16,32]", "model.net.dropout=0.2"]).model)
    assert model.net.fc.in_features == 32 and model.net.block1.dropout.p == 0.2


# What each accelerator of the trainer options needs: whether this machine has it, and the start of the message
# the config check gives without it.
GPUS = {
    "gpu": (torch.cuda.is_available, r"trainer\.accelerator: gpu, but this machine has no CUDA GPU.*trainer=cpu"),
    "mps": (torch.backends.mps.is_available, r"trainer\.accelerator: mps, but this machine has no Apple GPU.*trainer="),
}


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options_instantiate(make_config, option: str) -> None:
    cfg = make_config([f"trainer={option}"])
    needs_a_gpu = cfg.trainer.accelerator in GPUS
    if needs_a_gpu and not GPUS[cfg.trainer.accelerator][0]():
        with pytest.raises(ConfigError, match=GPUS[cfg.trainer.accelerator][1]):
            validate_config(cfg)
    else:
        validate_config(cfg)
    cfg = make_config([f"trainer={option}", *(ON_CPU if needs_a_gpu else [])])
    validate_config(cfg)
    trainer = instantiate(cfg.trainer)
    assert isinstance(trainer, Trainer)
    assert trainer.max_epochs == 200


def test_the_trainer_settings_researchers_change_most_need_no_plus(make_config) -> None:
    overrides = {
        "max_steps": 10,
        "max_time": "00:00:30:00",
        "val_check_interval": 0.5,
        "num_sanity_val_steps": 0,
        "accumulate_grad_batches": 2,
        "gradient_clip_val": 1.0,
    }
    trainer = instantiate(make_config([f"trainer.{key}={value}" for key, value in overrides.items()]).trainer)
    assert trainer.max_steps == 10 and trainer.fit_loop.max_steps == 10
    assert trainer.val_check_interval == 0.5 and trainer.num_sanity_val_steps == 0
    assert trainer.accumulate_grad_batches == 2
    assert trainer.gradient_clip_val == 1.0
    (timer,) = [c for c in trainer.callbacks if isinstance(c, Timer)]
    assert timer._duration == 30 * 60  # seconds
    # Left alone, each keeps Lightning's default.
    default = instantiate(make_config([]).trainer)
    assert (default.max_steps, default.val_check_interval, default.num_sanity_val_steps) == (-1, 1.0, 2)
    assert (default.accumulate_grad_batches, default.gradient_clip_val) == (1, None)
    assert not [c for c in default.callbacks if isinstance(c, Timer)]


def test_ddp_cpu_asks_for_two_cpu_processes_and_gpu_configs_use_bf16(make_config) -> None:
    assert instantiate(make_config(["trainer=ddp_cpu"]).trainer).num_devices == 2
    for option in ("gpu", "ddp"):
        cfg = make_config([f"trainer={option}"], speed=False)
        assert cfg.trainer.precision == "auto" and cfg.trainer.accelerator == "gpu"
        resolve_speed(cfg, Hardware(cuda=True, name="NVIDIA H100", bf16=True, triton=True))
        assert cfg.trainer.precision == "bf16-mixed"
    assert make_config(["trainer=ddp"]).trainer.strategy == "ddp"


@pytest.mark.parametrize("precision", ["32-true", "16-mixed", "bf16-mixed"])
def test_precision_is_overridable(make_config, precision: str) -> None:
    cfg = make_config(["trainer=cpu", f"trainer.precision={precision}"])
    validate_config(cfg)
    assert cfg.trainer.precision == precision


@pytest.mark.parametrize("option", options("logger"))
def test_logger_options_instantiate(make_config, option: str) -> None:
    cfg = make_config([f"logger={option}"])
    validate_config(cfg)
    loggers = instantiate_group(cfg.logger)
    assert len(loggers) == (3 if option == "many_loggers" else 1)


@pytest.mark.parametrize("override", ["logger=null", "callbacks=null", "callbacks=none"])
def test_logger_and_callbacks_can_be_switched_off(make_config, override: str) -> None:
    group = override.split("=")[0]
    assert instantiate_group(make_config([override]).get(group)) == []


def test_callbacks_none_also_switches_off_lightnings_implicit_checkpoint(make_config) -> None:
    trainer = instantiate(make_config(["callbacks=none"]).trainer)
    assert trainer.checkpoint_callback is None


DEFAULT_CALLBACKS = {
    "ModelCheckpoint",
    "LearningRateMonitor",
    "PlainProgressBar",  # the console is not a terminal under pytest
    "EpochSummary",
    "ModelSummary",
    "ImagesPerSecond",
    "RNGStateCheckpoint",
    "CheckpointOnSignal",
    "StopOnNonFiniteLoss",
    "StepCheckpoint",
    "DatasetSizes",
    "GpuMemory",
    "WandbMedia",
}
EXPECTED_CALLBACKS = {
    "default": DEFAULT_CALLBACKS,
    "step_checkpoint": {"StepCheckpoint"},
    "rng_state": {"RNGStateCheckpoint"},
    "checkpoint_on_signal": {"CheckpointOnSignal"},
    "non_finite_loss": {"StopOnNonFiniteLoss"},
    "throughput": DEFAULT_CALLBACKS | {"ImageThroughputMonitor"},
    "throughput_monitor": {"ImageThroughputMonitor"},
    "ema": DEFAULT_CALLBACKS | {"ExponentialMovingAverage"},
    "early_stopping": DEFAULT_CALLBACKS | {"EarlyStopping"},
    "images_per_second": {"ImagesPerSecond"},
    "model_checkpoint": {"ModelCheckpoint"},
    "last_checkpoint": {"ModelCheckpoint"},
    "lr_monitor": {"LearningRateMonitor"},
    "rich_progress_bar": {"PlainProgressBar"},
    "epoch_summary": {"EpochSummary"},
    "rich_model_summary": {"ModelSummary"},
    "dataset_sizes": {"DatasetSizes"},
    "gpu_memory": {"GpuMemory"},
    "wandb_media": {"WandbMedia"},
    "none": set(),
}


def test_every_callbacks_option_is_covered() -> None:
    assert set(options("callbacks")) == set(EXPECTED_CALLBACKS)


@pytest.mark.parametrize("option", options("callbacks"))
def test_callback_options_instantiate(make_config, option: str) -> None:
    cfg = make_config([f"callbacks={option}"])
    validate_config(cfg)
    names = {type(c).__name__ for c in instantiate_group(cfg.callbacks)}
    assert names == EXPECTED_CALLBACKS[option]


def test_early_stopping_watches_the_metric_the_best_checkpoint_is_chosen_by(make_config) -> None:
    callbacks = make_config(["callbacks=early_stopping"]).callbacks
    stopping, checkpoint = callbacks.early_stopping, callbacks.model_checkpoint
    assert (stopping.monitor, stopping.mode) == (checkpoint.monitor, checkpoint.mode) == ("val/acc", "max")


@pytest.mark.slow
def test_early_stopping_ends_a_run_that_stops_improving(make_config, tmp_path: Path) -> None:
    # val/acc is a share: with min_delta=1 no epoch after the first improves on it, and patience=1 stops at the
    # second validation, three epochs before trainer.max_epochs.
    stop_early = ["callbacks.early_stopping.min_delta=1", "callbacks.early_stopping.patience=1"]
    cfg = make_config([*FEW_IMAGES, "callbacks=early_stopping", *stop_early, "trainer.max_epochs=5"])
    run(train_for_sweep, cfg)
    rows = read_metrics(tmp_path)
    assert sorted({int(row["epoch"]) for row in rows if row.get("val/acc")}) == [0, 1]
    assert any(row.get("test/acc") for row in rows), "the best checkpoint is still tested"


@pytest.mark.parametrize("option", options("experiment"))
def test_experiment_options_compose_and_instantiate(make_config, option: str) -> None:
    cfg = make_config([f"experiment={option}"])
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        cfg = make_config([f"experiment={option}", *ON_CPU])  # the GPU recipe, checked as it would run here
    validate_config(cfg)
    assert isinstance(instantiate(cfg.model), LightningModule)
    assert isinstance(instantiate(cfg.data), LightningDataModule)


def test_paper_recipe_experiment(make_config) -> None:
    cfg = make_config(["experiment=wrn_cifar100"])
    assert cfg.trainer.max_epochs == 200 and cfg.data.batch_size == 128
    optimizer, scheduler = cfg.model.optimizer, cfg.model.scheduler
    assert (optimizer.lr, optimizer.momentum, optimizer.nesterov, optimizer.weight_decay) == (0.1, 0.9, True, 5e-4)
    assert (scheduler.name, list(scheduler.milestones), scheduler.gamma) == ("multistep", [60, 120, 160], 0.2)
    assert (cfg.data.crop_padding, cfg.data.flip) == (4, True)
    assert cfg.model.net.widths == [16, 160, 320, 640]


def test_eval_config_composes(make_config, tmp_path: Path) -> None:
    cfg = make_config([f"ckpt_path={tmp_path / 'x.ckpt'}"], config_name="eval.yaml")
    validate_config(cfg)
    assert cfg.task_name == "eval"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batchsize=64", "Key 'batchsize' is not in struct"),
        ("model=wrn_tinyy", "Could not find 'model/wrn_tinyy'"),
        ("data.batch_size=abc", "data.batch_size: expected an integer, got 'abc'"),
        ("model.net.widths=[16,160,320]", "widths must list 4"),
    ],
)
def test_bad_overrides_exit_nonzero_naming_the_key_before_data_is_read(
    override: str, message: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    result = run_entry("train.py", [override, f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path / 'logs'}"])
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output, output[-3000:]
    assert not data_dir.exists()
    assert "Traceback" not in output, "a configuration mistake should give its message, not a traceback"
