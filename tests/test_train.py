"""The entry points end to end, as a user runs them: `python src/train.py …` and `python src/eval.py …`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import run_entry
from wrncifar.config_validation import ConfigError
from wrncifar.evaluation import evaluate
from wrncifar.training import optimized_metric_value, train

TINY_SYNTHETIC = [
    "model=wrn_tiny",
    "data=synthetic",
    "data.train_per_class=30",
    "data.val_per_class=10",
    "trainer=cpu",
    "extras.print_config=false",
]
EPOCHS = 3
CHANCE = 1 / 100


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def last(rows: list[dict[str, str]], key: str) -> float:
    return float([r[key] for r in rows if r.get(key)][-1])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    result = run_entry("train.py", [*TINY_SYNTHETIC, f"trainer.max_epochs={EPOCHS}", f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_training_learns_far_above_chance(trained_run: Path) -> None:
    rows = read_metrics(trained_run)
    epochs = {int(r["epoch"]) for r in rows if r.get("val/acc")}
    assert epochs == set(range(EPOCHS))
    assert last(rows, "val/acc") > 20 * CHANCE
    assert last(rows, "val/acc_best") >= last(rows, "val/acc")
    assert last(rows, "train/loss") < 4.0  # ln(100) = 4.6 at chance


@pytest.mark.slow
def test_training_writes_checkpoints_that_load_with_weights_only(trained_run: Path) -> None:
    checkpoints = sorted((trained_run / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in checkpoints} >= {"last.ckpt"} and len(checkpoints) == 2
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert checkpoint["hyper_parameters"]["optimizer"]["lr"] == 0.1
    assert any(k.startswith("net.block6.layer2.cbr.0") for k in checkpoint["state_dict"])
    assert (trained_run / ".hydra" / "config.yaml").is_file() and (trained_run / "train.log").is_file()


@pytest.mark.slow
def test_eval_of_the_best_checkpoint_reproduces_the_test_accuracy_of_training(
    trained_run: Path, tmp_path: Path
) -> None:
    rows = read_metrics(trained_run)
    (best,) = [p for p in (trained_run / "checkpoints").glob("epoch_*.ckpt")]
    result = run_entry("eval.py", [f"ckpt_path={best}", f"hydra.run.dir={tmp_path}", "extras.print_config=false"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((tmp_path / "test_metrics.json").read_text())
    assert metrics["test/acc"] == pytest.approx(last(rows, "test/acc"), abs=1e-6)
    assert metrics["test/acc_top5"] == pytest.approx(last(rows, "test/acc_top5"), abs=1e-6)
    assert metrics["test/loss"] == pytest.approx(last(rows, "test/loss"), rel=1e-5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("ckpt_path=null", "ckpt_path is required"),
        ("ckpt_path=/nonexistent/run/checkpoints/last.ckpt", "is not a file: pass ckpt_path="),
    ],
)
def test_eval_without_a_checkpoint_fails_with_a_clear_message(make_config, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        evaluate(make_config([override], config_name="eval.yaml"))


@pytest.mark.slow
def test_fast_dev_run_of_the_paper_experiment_on_cpu(tmp_path: Path) -> None:
    args = ["experiment=wrn_cifar100", "debug=fdr", "data=synthetic", "data.batch_size=4", "data.eval_batch_size=4"]
    result = run_entry("train.py", [*args, f"hydra.run.dir={tmp_path}"])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "test/acc" in output and f"Outputs: {tmp_path}" in output
    assert (tmp_path / "config_tree.log").read_text().count("WideResNet") == 1


def test_train_returns_metrics_and_the_optimized_metric(make_config) -> None:
    cfg = make_config(
        [*TINY_SYNTHETIC, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
         "trainer.limit_test_batches=1", "logger=null", "callbacks=none"]
    )  # fmt: skip
    metrics = train(cfg)
    assert {"train/loss", "val/acc", "val/acc_best", "test/acc", "test/acc_top5", "test/loss"} <= set(metrics)
    assert optimized_metric_value(metrics, "val/acc_best") == metrics["val/acc_best"]
    with pytest.raises(ConfigError, match="optimized_metric 'val/f1' was not logged"):
        optimized_metric_value(metrics, "val/f1")


def test_model_and_data_class_counts_must_agree(make_config) -> None:
    cfg = make_config([*TINY_SYNTHETIC, "data.num_classes=10", "logger=null"])
    with pytest.raises(ConfigError, match="predicts 100 classes but the dataset has 10"):
        train(cfg)
