"""The fast path by default: the `auto` speed settings on a CUDA GPU (described by `Hardware`, as the machine
would report it) and on this CPU, where nothing changes; explicit values always win."""

from __future__ import annotations

import logging

import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from wrncifar.run.speed import COMPILE_FROM_EPOCHS, Hardware, resolve_speed

H100 = Hardware(cuda=True, name="NVIDIA H100 80GB HBM3", bf16=True, triton=True)
V100 = Hardware(cuda=True, name="Tesla V100-SXM2-16GB", bf16=False, triton=True)


def speed(cfg) -> tuple:
    return (cfg.trainer.precision, cfg.data.on_device, cfg.model.channels_last, cfg.model.compile, cfg.data.drop_last)


def test_the_paper_recipe_on_a_gpu_takes_the_whole_fast_path(make_config, caplog) -> None:
    cfg = make_config(["experiment=wrn_cifar100"], speed=False)
    with caplog.at_level(logging.INFO, logger="wrncifar.run.speed"):
        assert resolve_speed(cfg, H100) == []
    assert speed(cfg) == ("bf16-mixed", True, True, True, True)
    # The recipe itself is untouched: the speed comes from the pipeline.
    assert (cfg.data.batch_size, cfg.trainer.max_epochs, cfg.model.optimizer.lr) == (128, 200, 0.1)
    assert caplog.messages == [
        "Speed on NVIDIA H100 80GB HBM3: bf16-mixed, data on the GPU, channels_last, torch.compile (off with "
        "trainer.precision=32-true data.on_device=false model.channels_last=false model.compile=false)"
    ]


def test_older_gpus_get_fp16_and_short_runs_stay_eager(make_config) -> None:
    cfg = make_config(["experiment=wrn_cifar100", f"trainer.max_epochs={COMPILE_FROM_EPOCHS - 1}"], speed=False)
    resolve_speed(cfg, V100)
    assert speed(cfg) == ("16-mixed", True, True, False, False)


def test_on_the_cpu_nothing_changes(make_config) -> None:
    cfg = make_config(["experiment=wrn_cifar100"], speed=False)
    resolve_speed(cfg)  # this machine: no GPU
    assert speed(cfg) == ("32-true", False, False, False, False)


def test_a_policy_that_needs_cpu_workers_keeps_the_data_there_and_says_why(make_config, caplog) -> None:
    cfg = make_config(["experiment=wrn_cifar100", "data.policy=trivialaugment"], speed=False)
    with caplog.at_level(logging.INFO, logger="wrncifar.run.speed"):
        fallbacks = resolve_speed(cfg, H100)
    assert fallbacks == ["data.policy=trivialaugment runs in CPU loader workers, so the data stays on the CPU"]
    assert speed(cfg) == ("bf16-mixed", False, True, True, True)
    assert fallbacks[0] in caplog.messages[0]


def test_without_triton_a_gpu_run_stays_eager(make_config) -> None:
    cfg = make_config(["experiment=wrn_cifar100"], speed=False)
    assert resolve_speed(cfg, Hardware(cuda=True, name="GPU", bf16=True)) == [
        "torch.compile needs Triton, which is not installed: eager"
    ]
    assert cfg.model.compile is False


@pytest.mark.parametrize(
    "override",
    [
        "trainer.precision=32-true",
        "data.on_device=false",
        "model.channels_last=false",
        "model.compile=false",
        "data.drop_last=false",
    ],
)
def test_an_explicit_value_wins(make_config, override: str) -> None:
    cfg = make_config(["experiment=wrn_cifar100", override], speed=False)
    resolve_speed(cfg, H100)
    key, value = override.split("=")
    assert str(cfg[key.split(".")[0]][key.split(".")[1]]).lower() == value


def test_auto_reaching_a_class_directly_is_refused_not_read_as_true(make_config) -> None:
    cfg = make_config(["model=wrn_tiny", "data=synthetic"], speed=False)
    with pytest.raises(InstantiationException, match="on_device must be true or false here, got 'auto'"):
        instantiate(cfg.data)
    with pytest.raises(InstantiationException, match="channels_last must be true or false here, got 'auto'"):
        instantiate(cfg.model)
