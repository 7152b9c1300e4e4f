"""The ready experiments: each composes to its documented recipe, and a `debug=fdr` run of each passes on the CPU
with the tiny model and synthetic data."""

from __future__ import annotations

import pytest

from tests.conftest import TINY_SYNTHETIC
from wrncifar.run.fit_and_test import train
from wrncifar.run.speed import Hardware, resolve_speed

EXPERIMENTS = ["wrn_cifar100", "wrn_cifar100_fast", "wrn_cifar100_strong"]


def test_fast_recipe_is_one_cycle_with_label_smoothing_bf16_and_on_device_data(make_config) -> None:
    cfg = make_config(["experiment=wrn_cifar100_fast"], speed=False)
    assert (cfg.trainer.max_epochs, cfg.trainer.accelerator) == (30, "gpu")
    resolve_speed(cfg, Hardware(cuda=True, name="NVIDIA H100", bf16=True, triton=True))
    assert cfg.trainer.precision == "bf16-mixed"  # fp16 on a GPU without bf16 arithmetic (tests/run/test_speed.py)
    assert cfg.model.scheduler.name == "onecycle" and cfg.model.label_smoothing == 0.1
    assert cfg.data.on_device and cfg.data.drop_last and cfg.model.compile and cfg.model.channels_last
    assert cfg.model.net._target_.endswith(".WideResNet") and cfg.model.net.widths == [16, 160, 320, 640]


def test_paper_recipe_has_the_wrn_papers_padding_init_and_step_schedule(make_config) -> None:
    cfg = make_config(["experiment=wrn_cifar100"])
    assert (cfg.data.crop_padding_mode, cfg.model.net.init) == ("reflect", "wrn")
    assert (cfg.model.scheduler.name, cfg.model.scheduler.milestones, cfg.model.scheduler.gamma) == (
        "multistep",
        [60, 120, 160],
        0.2,
    )
    assert (cfg.data.batch_size, cfg.model.optimizer.lr, cfg.model.optimizer.weight_decay) == (128, 0.1, 5e-4)
    assert make_config([]).model.net.init == "pytorch", "without the recipe the seed's own init"


def test_strong_recipe_is_trivialaugment_cutout_label_smoothing_and_ema_for_200_epochs(make_config) -> None:
    cfg = make_config(["experiment=wrn_cifar100_strong"])
    assert cfg.trainer.max_epochs == 200 and cfg.model.scheduler.name == "cosine"
    assert (cfg.data.policy, cfg.data.cutout, cfg.data.on_device) == ("trivialaugment", 16, False)
    # As the AutoAugment code pads and the Cutout code places its square.
    assert (cfg.data.crop_padding_mode, cfg.data.cutout_placement) == ("zeros", "centre")
    assert cfg.model.label_smoothing == 0.1
    assert cfg.callbacks.ema._target_ == "wrncifar.callbacks.ema.ExponentialMovingAverage"
    assert {"model_checkpoint", "rng_state", "step_checkpoint"} <= set(cfg.callbacks)  # the defaults stay


@pytest.mark.filterwarnings("ignore:Precision bf16-mixed is not supported by the model summary")
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run_of_each_experiment_with_the_tiny_model(make_config, experiment: str) -> None:
    overrides = [f"experiment={experiment}", "debug=fdr", *TINY_SYNTHETIC, "logger=null"]
    # Compiling for the CPU takes minutes; bf16 autocast on the CPU is slow at the recipe's batch of 512.
    overrides += ["model.compile=false", "data.batch_size=32", "data.eval_batch_size=64"]
    metrics = train(make_config(overrides))
    assert {"train/loss", "val/acc", "test/acc"} <= set(metrics)
    assert 0 < metrics["train/loss"] < 10


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("data", [None, "cifar10", "synthetic"])
def test_each_experiment_is_tagged_with_the_data_it_trains_on(make_config, experiment: str, data: str | None) -> None:
    cfg = make_config([f"experiment={experiment}", *([f"data={data}"] if data else [])])
    recipe = {"wrn_cifar100": "paper-recipe", "wrn_cifar100_fast": "fast", "wrn_cifar100_strong": "strong"}
    assert list(cfg.tags) == ["wrn", data or "cifar100", recipe[experiment]]
