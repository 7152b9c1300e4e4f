"""Training end to end, as a user runs it: `python src/train.py …`, and `train(cfg)` in process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback

from tests.conftest import FEW_IMAGES, TINY_SYNTHETIC, TRAINED_EPOCHS, last_logged, read_metrics, run_entry
from wrncifar.run.config_validation import ConfigError
from wrncifar.run.fit_and_test import (
    metrics_as_floats,
    optimized_metric_value,
    restored_best_accuracy,
    train,
    train_for_sweep,
)

CHANCE = 1 / 100
# A couple of batches per stage: exercises every hook in seconds.
FEW_BATCHES = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]


@pytest.mark.slow
def test_training_learns_far_above_chance(trained_run: Path) -> None:
    rows = read_metrics(trained_run)
    assert {int(r["epoch"]) for r in rows if r.get("val/acc")} == set(range(TRAINED_EPOCHS))
    assert last_logged(rows, "val/acc") > 20 * CHANCE
    assert last_logged(rows, "val/acc_best") >= last_logged(rows, "val/acc")
    assert last_logged(rows, "train/loss") < 4.0  # ln(100) = 4.6 at chance
    assert last_logged(rows, "test/acc") > 20 * CHANCE


@pytest.mark.slow
def test_on_device_data_learns_like_the_loader_workers(make_config, trained_run: Path) -> None:
    cfg = make_config([*TINY_SYNTHETIC, f"trainer.max_epochs={TRAINED_EPOCHS}", "data.on_device=true", "logger=null"])
    metrics = train(cfg)
    assert metrics["val/acc"] > 20 * CHANCE
    # Same data, model and augmentation distribution: within a few points of the CPU-transform run.
    assert metrics["val/acc"] == pytest.approx(last_logged(read_metrics(trained_run), "val/acc"), abs=0.1)


@pytest.mark.slow
def test_training_writes_checkpoints_that_load_with_weights_only(trained_run: Path) -> None:
    names = {p.name for p in (trained_run / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in names and len(names) == 2  # last + best by val/acc
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert checkpoint["hyper_parameters"]["optimizer"]["lr"] == 0.1
    assert any(k.startswith("net.block6.layer2.cbr.0") for k in checkpoint["state_dict"])
    assert (trained_run / ".hydra" / "config.yaml").is_file() and (trained_run / "train.log").is_file()


@pytest.mark.slow
def test_test_only_mode_tests_the_given_checkpoint(trained_run: Path, make_config) -> None:
    (best,) = (trained_run / "checkpoints").glob("epoch_*.ckpt")
    cfg = make_config([*TINY_SYNTHETIC, "train=false", f"ckpt_path={best}", "logger=null"])
    metrics = train(cfg)
    assert metrics["test/acc"] == pytest.approx(last_logged(read_metrics(trained_run), "test/acc"), abs=1e-6)
    assert train_for_sweep(cfg) is None  # nothing to optimise without training


@pytest.mark.slow
def test_fast_dev_run_of_the_paper_experiment_on_cpu(tmp_path: Path) -> None:
    args = ["experiment=wrn_cifar100", "debug=fdr", "data=synthetic", "data.batch_size=4", "data.eval_batch_size=4"]
    result = run_entry("train.py", [*args, f"hydra.run.dir={tmp_path}"])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "test/acc" in output and f"Outputs: {tmp_path}" in output
    assert (tmp_path / "config_tree.log").read_text().count("WideResNet") == 1


@pytest.mark.slow
def test_missing_data_stops_the_run_with_exit_1_and_guidance(tmp_path: Path) -> None:
    args = [f"paths.data_dir={tmp_path / 'empty'}", "data.download=false", f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_entry("train.py", [*args, "model=wrn_tiny", "extras.print_config=false"])
    assert result.returncode == 1
    assert "CIFAR-100 not found" in result.stdout + result.stderr and "data=synthetic" in result.stdout + result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_returns_metrics_and_the_optimized_metric(make_config) -> None:
    cfg = make_config([*TINY_SYNTHETIC, *FEW_BATCHES, "logger=null", "callbacks=none"])
    metrics = train(cfg)
    assert {"train/loss", "val/acc", "val/acc_best", "test/acc", "test/acc_top5", "test/loss"} <= set(metrics)
    assert train_for_sweep(cfg) == pytest.approx(metrics["val/acc_best"])


def test_logging_can_be_off_with_the_default_callbacks(make_config, tmp_path: Path) -> None:
    metrics = train(make_config([*TINY_SYNTHETIC, *FEW_BATCHES, "logger=null"]))
    assert "val/acc" in metrics
    assert not (tmp_path / "csv").exists()
    assert any((tmp_path / "checkpoints").glob("*.ckpt"))


def test_class_names_reach_the_loggers(make_config, tmp_path: Path) -> None:
    train(make_config([*TINY_SYNTHETIC, *FEW_BATCHES, "callbacks=none"]))
    hparams = (tmp_path / "csv" / "hparams.yaml").read_text()
    assert "data/classes" in hparams and "class_099" in hparams


@pytest.mark.parametrize("mode", ["fdr", "limit", "overfit", "profiler"])
def test_every_debug_mode_trains(make_config, mode: str, tmp_path: Path) -> None:
    cfg = make_config([f"debug={mode}", *TINY_SYNTHETIC, "data.batch_size=16", "data.eval_batch_size=16"])
    assert cfg.task_name == "debug"
    metrics = train(cfg)
    assert "test/acc" in metrics
    if mode == "overfit":
        assert metrics["train/acc"] > 0.9, "a few batches should be learnt by heart"


def test_metrics_become_plain_floats() -> None:
    metrics = metrics_as_floats({"val/acc": torch.tensor(0.25), "epoch": 3, "note": "text"})
    assert metrics == {"val/acc": 0.25, "epoch": 3.0}
    assert all(type(v) is float for v in metrics.values())


def test_optimized_metric_is_read_or_named_as_missing() -> None:
    assert optimized_metric_value({"val/acc_best": 0.5}, "val/acc_best") == 0.5
    assert optimized_metric_value({"val/acc_best": 0.5}, None) is None
    with pytest.raises(ConfigError, match="optimized_metric 'val/f1' was not logged; logged metrics: val/acc_best"):
        optimized_metric_value({"val/acc_best": 0.5}, "val/f1")


def test_the_restored_best_accuracy_is_the_checkpoints_or_none_if_it_never_validated(make_config) -> None:
    """What a requeued job that had finished training returns to its sweep (it validates nothing itself)."""
    cfg = make_config(TINY_SYNTHETIC)
    validated, restored, never = (instantiate(cfg.model) for _ in range(3))
    validated.val_acc_best(torch.tensor(0.25))
    validated.val_acc_best(torch.tensor(0.75))
    restored.load_state_dict(validated.state_dict())
    assert restored_best_accuracy(restored) == {"val/acc_best": 0.75}
    # -inf would read as a diverged run; without the metric, the sweep names it as not logged, as the first run did.
    never.load_state_dict(instantiate(cfg.model).state_dict())
    assert restored_best_accuracy(never) == {}


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_plain_network_weights(tmp_path: Path) -> None:
    from wrncifar.models.wideresnet import WideResNet

    torch.manual_seed(3)
    start = WideResNet(num_classes=100, widths=[8, 16, 32, 64])
    weights = tmp_path / "weights.pt"
    torch.save({"epoch": 10, "state_dict": start.state_dict()}, weights)  # a plain training loop's checkpoint
    run_dir = tmp_path / "run"
    frozen = ["model.optimizer.lr=1e-12", "model.optimizer.weight_decay=0", "model.net.dropout=0", "test=false"]
    args = [*TINY_SYNTHETIC, "trainer.max_epochs=1", *frozen, f"init_from={weights}", f"hydra.run.dir={run_dir}"]
    result = run_entry("train.py", args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Starting from the network weights of {weights}" in result.stdout + result.stderr
    trained = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name, value in start.state_dict().items():
        if name.endswith(".weight") and value.ndim == 4:  # the convolutions, which an lr of 1e-12 leaves as they were
            torch.testing.assert_close(trained[f"net.{name}"], value)

    both = run_entry("train.py", [*args[:-1], f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"])
    assert both.returncode == 1 and "init_from starts a new run" in both.stdout + both.stderr


@pytest.mark.slow
def test_a_diverging_run_stops_with_exit_1_and_writes_no_broken_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*TINY_SYNTHETIC, "data.train_per_class=4", "data.val_per_class=2", "data.test_per_class=1"]
    result = run_entry(
        "train.py", [*args, "trainer.max_epochs=2", "model.optimizer.lr=1e6", f"hydra.run.dir={run_dir}"]
    )
    assert result.returncode == 1
    assert "became non-finite" in result.stdout + result.stderr and "Traceback" not in result.stderr
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for k, v in state.items() if k.startswith("net.") and v.is_floating_point())


class SanityProbe(Callback):
    """Counts the sanity validations of the runs it is part of."""

    checks = 0

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        type(self).checks += 1


@pytest.mark.slow
def test_a_resumed_run_skips_the_sanity_validation(trained_run: Path, make_config) -> None:
    probe = ["+callbacks.probe._target_=tests.run.test_fit_and_test.SanityProbe", "logger=null"]
    SanityProbe.checks = 0
    train(make_config([*TINY_SYNTHETIC, *probe, "trainer.max_epochs=1", "test=false"]))
    assert SanityProbe.checks == 1  # a new run checks its validation code first
    last = trained_run / "checkpoints" / "last.ckpt"
    train(make_config([*TINY_SYNTHETIC, *probe, f"ckpt_path={last}", f"trainer.max_epochs={TRAINED_EPOCHS + 1}"]))
    assert SanityProbe.checks == 1  # the resumed one goes straight to its next epoch


@pytest.mark.parametrize(("name", "epochs_trained"), [("val/accc", [0]), ("train/los", [0]), ("val/loss", [0, 1, 2])])
def test_an_optimized_metric_the_run_does_not_log_stops_it_after_its_first_epoch(
    make_config, tmp_path: Path, name: str, epochs_trained: list[int]
) -> None:
    """A typo costs one epoch of each sweep job, not all of them; a metric the run logs trains to the end."""
    cfg = make_config([*FEW_IMAGES, "trainer.max_epochs=3", "test=false", f"optimized_metric={name}", "logger=csv"])
    if name == "val/loss":
        assert train_for_sweep(cfg) > 0
    else:
        with pytest.raises(ConfigError, match=rf"optimized_metric '{name}' is not among the metrics this run logs \("):
            train_for_sweep(cfg)
    assert [int(r["epoch"]) for r in read_metrics(tmp_path) if r.get("val/loss")] == epochs_trained
