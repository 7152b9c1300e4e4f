"""The fast path by default: the `auto` speed settings on a CUDA GPU (described by `Hardware`, as the machine
would report it) and on this CPU, where nothing changes; explicit values always win."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from tests.conftest import run_entry
from wrncifar.run.config_validation import ConfigError
from wrncifar.run.speed import COMPILE_FROM_EPOCHS, Hardware, resolve_speed, use_compile_cache

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
        "Speed on NVIDIA H100 80GB HBM3: bf16-mixed, data on the GPU, channels_last, torch.compile, cuDNN autotuning "
        "(off with trainer.precision=32-true trainer.benchmark=false data.on_device=false model.channels_last=false "
        "model.compile=false)"
    ]
    assert cfg.trainer.benchmark is True


def test_older_gpus_get_fp16_and_short_runs_stay_eager(make_config) -> None:
    cfg = make_config(["experiment=wrn_cifar100", f"trainer.max_epochs={COMPILE_FROM_EPOCHS - 1}"], speed=False)
    resolve_speed(cfg, V100)
    assert speed(cfg) == ("16-mixed", True, True, False, False)


def test_on_the_cpu_only_the_data_path_changes(make_config, caplog) -> None:
    """fp32 and eager as ever; the batches are cut and augmented in the training process (faster than loader
    workers competing with the step for the cores, docs/benchmarks.md)."""
    cfg = make_config(["experiment=wrn_cifar100"], speed=False)
    with caplog.at_level(logging.INFO, logger="wrncifar.run.speed"):
        assert resolve_speed(cfg) == []  # this machine: no GPU
    assert speed(cfg) == ("32-true", True, False, False, False)
    assert cfg.trainer.benchmark is None  # Lightning's own default
    assert caplog.messages == [
        "Speed on CPU: 32-true, data batched in the training process, NCHW, eager (off with data.on_device=false)"
    ]


def test_on_the_cpu_a_policy_keeps_the_loader_workers_and_says_so(make_config, caplog) -> None:
    cfg = make_config(["experiment=wrn_cifar100", "data.policy=autoaugment"], speed=False)
    with caplog.at_level(logging.INFO, logger="wrncifar.run.speed"):
        assert resolve_speed(cfg) == ["data.policy=autoaugment runs in CPU loader workers"]
    assert speed(cfg) == ("32-true", False, False, False, False)
    assert caplog.messages == [
        "Speed on CPU: 32-true, data from CPU loader workers, NCHW, eager; data.policy=autoaugment runs in CPU "
        "loader workers"
    ]


def test_an_apple_gpu_is_named_and_keeps_the_cpu_choices(make_config, monkeypatch, caplog) -> None:
    monkeypatch.setattr("wrncifar.run.speed._mps_available", lambda: True)
    assert Hardware.for_accelerator("mps").name == "Apple GPU (MPS)"
    assert Hardware.for_accelerator("auto").gpu and not Hardware.for_accelerator("auto").cuda
    assert not Hardware.for_accelerator("cpu").gpu
    cfg = make_config(["experiment=wrn_cifar100", "trainer=mps"], speed=False)
    with caplog.at_level(logging.INFO, logger="wrncifar.run.speed"):
        resolve_speed(cfg)
    assert speed(cfg) == ("32-true", True, False, False, False)
    assert caplog.messages == [
        "Speed on Apple GPU (MPS): 32-true, data on the GPU, NCHW, eager (off with data.on_device=false)"
    ]


@pytest.mark.parametrize(
    ("capability", "emulated_bf16", "bf16"),
    [((9, 0), True, True), ((8, 0), True, True), ((7, 5), True, False), ((7, 0), False, False)],
)
def test_bf16_is_chosen_where_the_gpu_computes_in_it_not_where_torch_emulates_it(
    monkeypatch, capability, emulated_bf16, bf16
) -> None:
    """`torch.cuda.is_bf16_supported()` says yes on a T4 (7.5), whose bf16 is emulated: fp16 is its fast path."""
    import torch

    asked: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: asked.append(index) or "GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: asked.append(index) or capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: emulated_bf16)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr("torch.utils._triton.has_triton", lambda: True)
    assert Hardware.for_accelerator("auto", devices=1).bf16 is bf16
    assert Hardware.for_accelerator("gpu", devices=[2, 3]).bf16 is bf16
    assert Hardware.for_accelerator("gpu", devices="1,").name == "GPU"
    assert asked == [0, 0, 2, 2, 1, 1], "the GPU the run trains on: the first of a list of indices"
    assert Hardware.for_accelerator("gpu", devices=["x"]).cuda, "a bad value is the config check's to name, not a crash"
    assert Hardware.for_accelerator("cpu") == Hardware(cuda=False)


@pytest.mark.parametrize(
    ("limit", "compiles"),
    [
        ([], True),  # 200 epochs
        ([f"trainer.max_epochs={COMPILE_FROM_EPOCHS - 1}"], False),
        (["trainer.max_time=00:00:05:00"], False),  # the first limit reached stops training
        (["trainer.max_time=00:02:00:00"], True),
        (["trainer.max_time={minutes: 9}"], False),
        (["trainer.max_steps=1000"], False),  # 128,000 images: under 3 epochs
        (["trainer.max_steps=50000"], True),
        (["trainer.max_epochs=-1", "trainer.max_steps=1000"], False),
        # limit_train_batches shortens every epoch: a count of batches (of 128 images) or a share of the epoch.
        (["trainer.limit_train_batches=5"], False),  # 200 × 640 images: under 3 epochs' worth
        (["debug=limit", "trainer.max_epochs=200"], False),
        (["trainer.limit_train_batches=0.25"], False),  # 50 epochs' worth
        (["trainer.limit_train_batches=0.5", "trainer.max_epochs=400"], True),
        (["trainer.limit_train_batches=1.0"], True),  # the whole epoch
        (["trainer.limit_train_batches=1000"], True),  # more batches than an epoch has: the whole epoch
        (["trainer.limit_train_batches=5", "trainer.max_epochs=-1"], True),  # no end but the batches
        # fast_dev_run: true or a count of batches, whatever the epochs say.
        (["debug=fdr"], False),
        (["+trainer.fast_dev_run=3"], False),
        (["+trainer.fast_dev_run=false"], True),
        (["+trainer.fast_dev_run=0"], True),
    ],
)
def test_compiling_waits_for_a_run_long_enough_to_repay_it_whichever_limit_stops_it(
    make_config, limit, compiles
) -> None:
    cfg = make_config(["experiment=wrn_cifar100", *limit], speed=False)
    resolve_speed(cfg, H100)
    assert (cfg.model.compile, cfg.data.drop_last) == (compiles, compiles)


@pytest.mark.parametrize(
    ("limit", "why"),
    [
        (["debug=fdr"], "trainer.fast_dev_run=true"),
        (["+trainer.fast_dev_run=2"], "trainer.fast_dev_run=2"),
        (["trainer.limit_train_batches=5"], "trainer.max_epochs=200 trainer.limit_train_batches=5"),
        (["trainer.limit_train_batches=0.1"], "trainer.max_epochs=200 trainer.limit_train_batches=0.1"),
        ([f"trainer.max_epochs={COMPILE_FROM_EPOCHS - 1}"], f"trainer.max_epochs={COMPILE_FROM_EPOCHS - 1}"),
        (["trainer.max_steps=1000"], "trainer.max_steps=1000"),
        (["trainer.max_time=00:00:05:00"], "trainer.max_time=00:00:05:00"),
    ],
)
def test_the_start_up_line_names_the_setting_that_makes_a_gpu_run_too_short_to_compile(
    make_config, caplog, limit, why
) -> None:
    cfg = make_config(["experiment=wrn_cifar100", *limit], speed=False)
    with caplog.at_level(logging.INFO, logger="wrncifar.run.speed"):
        fallbacks = resolve_speed(cfg, H100)
    assert fallbacks == [f"{why} trains too little to repay compiling: eager"]
    (line,) = caplog.messages
    assert ", eager, " in line and line.endswith(f"; {fallbacks[0]}")


def test_a_short_run_on_the_cpu_or_an_evaluation_has_no_compile_reason_to_give(make_config) -> None:
    """Neither would compile whatever the run's length: the start-up line says eager, with no reason."""
    cfg = make_config(["experiment=wrn_cifar100", "debug=fdr"], speed=False)
    assert resolve_speed(cfg) == []
    cfg = make_config(["experiment=wrn_cifar100", "debug=fdr"], speed=False)
    assert resolve_speed(cfg, H100, training=False) == [] and cfg.model.compile is False


def test_deterministic_runs_keep_cudnn_from_autotuning(make_config) -> None:
    cfg = make_config(["experiment=wrn_cifar100", "trainer.deterministic=true"], speed=False)
    resolve_speed(cfg, H100)
    assert cfg.trainer.benchmark is None  # Lightning: False when deterministic


def test_a_policy_that_needs_cpu_workers_keeps_the_data_there_and_says_why(make_config, caplog) -> None:
    cfg = make_config(["experiment=wrn_cifar100", "data.policy=trivialaugment"], speed=False)
    with caplog.at_level(logging.INFO, logger="wrncifar.run.speed"):
        fallbacks = resolve_speed(cfg, H100)
    assert fallbacks == ["data.policy=trivialaugment runs in CPU loader workers, so the data stays on the CPU"]
    assert speed(cfg) == ("bf16-mixed", False, True, True, True)
    assert fallbacks[0] in caplog.messages[0]


def test_where_torch_cannot_compile_on_this_python_a_gpu_run_stays_eager(make_config) -> None:
    cfg = make_config(["experiment=wrn_cifar100"], speed=False)
    fallbacks = resolve_speed(cfg, Hardware(cuda=True, name="GPU", bf16=True, triton=True, dynamo=False))
    assert cfg.model.compile is False
    assert fallbacks == [f"torch {torch.__version__} cannot compile on this Python: eager"]


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


def test_a_compiling_run_points_torch_compile_at_the_cache_folder(make_config, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    cfg = make_config(["model.compile=false"])
    assert cfg.paths.compile_cache_dir.endswith("/.cache/torch_compile")  # in the checkout by default
    assert use_compile_cache(cfg) is None and "TORCHINDUCTOR_CACHE_DIR" not in os.environ

    cfg = make_config(["model.compile=true", f"paths.compile_cache_dir={tmp_path / 'cache'}"])
    assert use_compile_cache(cfg) == tmp_path / "cache"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache")
    # The variable set outside is the default: what a cluster's job script exports is kept.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "exported"))
    assert make_config(["model.compile=true"]).paths.compile_cache_dir == str(tmp_path / "exported")


def test_an_unwritable_compile_cache_folder_is_refused_before_anything_runs(make_config, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    (tmp_path / "file").write_text("")
    cfg = make_config(["model.compile=true", f"paths.compile_cache_dir={tmp_path / 'file' / 'cache'}"])
    with pytest.raises(
        ConfigError,
        match=r"paths\.compile_cache_dir=.*file/cache cannot be created: .*file is a "
        r"file, not a folder\. Give a writable folder with paths\.compile_cache_dir=.*model\.compile=false",
    ):
        use_compile_cache(cfg)
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ


@pytest.mark.slow
def test_a_second_run_of_the_same_shapes_takes_its_compiled_graphs_from_the_cache(tmp_path) -> None:
    """Cold, then warm: the first run compiles every graph, the second finds all of them in paths.compile_cache_dir
    (the first step's log line says so)."""
    args = [
        "model=wrn_tiny",
        "model.net.widths=[4,8,8,8]",
        "model.net.blocks_per_stage=1",
        "model.compile=true",
        "data=synthetic",
        "data.train_per_class=2",
        "data.val_per_class=1",
        "data.test_per_class=1",
        "data.batch_size=50",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "test=false",
        "logger=csv",
        "extras.print_config=false",
        f"paths.compile_cache_dir={tmp_path / 'cache'}",
    ]
    graphs = []
    for run in ("cold", "warm"):
        result = run_entry("train.py", [*args, f"hydra.run.dir={tmp_path / run}"])
        assert result.returncode == 0, result.stderr[-3000:]
        log = (tmp_path / run / "train.log").read_text()
        match = re.search(
            r"First training step done .* \(torch\.compile: (\d+) graphs, (\d+) from the cache in (.*)\)", log
        )
        assert match, log[-3000:]
        graphs.append((int(match[1]), int(match[2]), Path(match[3])))
    (cold_graphs, cold_hits, folder), (warm_graphs, warm_hits, _) = graphs
    assert folder == tmp_path / "cache" and any(folder.iterdir())
    assert cold_graphs > 0 and cold_hits == 0
    assert warm_hits == warm_graphs == cold_graphs
