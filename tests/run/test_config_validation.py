from __future__ import annotations

import re

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from tests.conftest import run_entry
from wrncifar.run.config_validation import ConfigError, check_num_classes, validate_config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=abc", "data.batch_size: expected an integer, got 'abc'"),
        ("data.batch_size=1.5", "data.batch_size: expected an integer, got 1.5"),
        ("data.flip=maybe", "data.flip: expected a boolean (true/false), got 'maybe'"),
        ("model.optimizer.lr=fast", "model.optimizer.lr: expected a number"),
        ("model.net.widths=[16,a,320,640]", "model.net.widths: element 1: expected an integer, got 'a'"),
        ("trainer.max_epochs=ten", "trainer.max_epochs"),
        ("+data.colour=blue", "data.colour: not an argument of wrncifar.data.cifar100.CIFAR100DataModule"),
        ("+model.scheduler.shape=linear", "model.scheduler.shape: not a field of ScheduleSettings"),
        (
            "model.scheduler.name=linear",
            "model.scheduler.name: expected one of ['cosine', 'multistep', 'constant', 'onecycle']",
        ),
        ("seed=abc", "seed: expected int or null, got 'abc'"),
        ("seed=-1", "seed: a seed must be in 0 … 4294967295, got -1"),
        ("seed=4294967296", "seed: a seed must be in 0 … 4294967295, got 4294967296"),
        ("data.split_seed=-1", "data.split_seed: a seed must be in 0 … 4294967295, got -1"),
        ("train=sometimes", "train: expected a boolean"),
        ("matmul_precision=fastest", "matmul_precision: expected"),
        ("trainer.max_epochs=0", "trainer.max_epochs: must be >= 1"),
        ("trainer.max_epochs=-3", "trainer.max_epochs: must be >= 1"),
        ("trainer.max_steps=0", "trainer.max_steps: 0 trains nothing"),
        ("trainer.check_val_every_n_epoch=0", "trainer.check_val_every_n_epoch: must be >= 1"),
        ("trainer.limit_train_batches=0", "trainer.limit_train_batches: 0 trains nothing"),
        ("allow_oversubscription=perhaps", "allow_oversubscription: expected a boolean"),
        ("init_from=7", "init_from: expected str or null, got 7"),
    ],
)
def test_validation_names_the_mistyped_key(make_config, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(make_config([override]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=0", "batch_size must be a positive integer, got 0"),
        ("data.batch_size=-8", "batch_size must be a positive integer, got -8"),
        ("model.optimizer.lr=0", "optimizer.lr must be > 0, got 0"),
        ("model.optimizer.lr=-0.1", "optimizer.lr must be > 0, got -0.1"),
        ("model.net.widths=[16,160,320]", "widths must list 4 channel counts"),
        (f"data.batch_size={2**70}", "batch_size must be below 2,147,483,648, got 1,180,591,620,717,411,303,424"),
    ],
)
def test_impossible_values_are_refused_when_built(make_config, override: str, message: str) -> None:
    cfg = make_config(["model=wrn_tiny", "data=synthetic", override])
    validate_config(cfg)  # well-typed; the constructors know the allowed ranges
    with pytest.raises(InstantiationException, match=re.escape(message)):
        instantiate(cfg.data)
        instantiate(cfg.model)


def test_every_problem_is_reported_at_once(make_config) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(make_config(["data.batch_size=abc", "model.optimizer.momentum=high", "seed=x"]))
    assert all(key in str(err.value) for key in ("data.batch_size", "model.optimizer.momentum", "seed"))


def test_valid_configs_pass_including_settings_given_as_mappings(make_config) -> None:
    validate_config(make_config(["model.optimizer.lr=1", "seed=null", "data.num_workers=null"]))
    validate_config(make_config(["seed=0", "data.split_seed=4294967295"]))


def test_every_seed_of_the_config_is_checked_by_its_name(make_config) -> None:
    with pytest.raises(ConfigError, match=re.escape("data.seed: a seed must be in 0 … 4294967295, got -2")):
        validate_config(make_config(["data=synthetic", "data.seed=-2"]))


def test_subclass_arguments_are_checked_through_kwargs(make_config) -> None:
    with pytest.raises(ConfigError, match=re.escape("data.batch_size: expected an integer")):
        validate_config(make_config(["data=synthetic", "data.batch_size=abc"]))
    with pytest.raises(ConfigError, match=re.escape("data.colour: not an argument")):
        validate_config(make_config(["data=synthetic", "+data.colour=red"]))


def test_model_and_data_class_counts_must_agree(make_config) -> None:
    cfg = make_config(["model=wrn_tiny", "data=synthetic", "data.num_classes=10", "model.net.num_classes=100"])
    with pytest.raises(
        ConfigError, match=re.escape("predicts 100 classes but the dataset has 10: set model.net.num_classes=10")
    ):
        check_num_classes(instantiate(cfg.model), instantiate(cfg.data))
    cfg = make_config(["model=wrn_tiny", "data=synthetic", "data.num_classes=10", "model.net.num_classes=10"])
    check_num_classes(instantiate(cfg.model), instantiate(cfg.data))


def test_a_gpu_asked_for_without_one_says_so_and_what_to_use(make_config, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    with pytest.raises(ConfigError, match=r"trainer\.accelerator: gpu, but this machine has no CUDA GPU .*trainer=cpu"):
        validate_config(make_config(["trainer=gpu"]))


def test_an_apple_gpu_asked_for_without_one_says_so_and_what_to_use(make_config, monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)  # as on this Linux machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        ConfigError,
        match=r"trainer\.accelerator: mps, but this machine has no Apple GPU .*train on the CPU with trainer=cpu",
    ):
        validate_config(make_config(["trainer=mps"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a CUDA machine: its GPU is the advice
    with pytest.raises(ConfigError, match=r"no Apple GPU .*train on a CUDA GPU with trainer=gpu"):
        validate_config(make_config(["trainer=mps"]))


def test_a_cuda_gpu_asked_for_on_a_mac_points_to_its_apple_gpu(make_config, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.raises(ConfigError, match=r"no CUDA GPU .*trainer=cpu .*for this Mac's Apple GPU, trainer=mps"):
        validate_config(make_config(["trainer=gpu"]))
    validate_config(make_config(["trainer=mps"]))  # and the Apple GPU itself is accepted


def test_a_bad_value_is_the_first_thing_printed_not_the_config_tree(tmp_path) -> None:
    args = ["model=wrn_tiny", "data=synthetic", "data.batch_size=abc", "extras.print_config=true"]
    result = run_entry("train.py", [*args, f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.returncode == 1
    assert "data.batch_size: expected an integer, got 'abc'" in result.stdout + result.stderr
    assert "CONFIG" not in result.stdout  # the tree is printed only for a config that passed its checks
