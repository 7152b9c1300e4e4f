"""`python src/eval.py ckpt_path=…` and `evaluate(cfg)`: test a checkpoint with its training run's config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import last_logged, read_metrics, run_entry
from wrncifar.config_validation import ConfigError
from wrncifar.evaluation import evaluate, training_run_config


def best_checkpoint(run_dir: Path) -> Path:
    (best,) = (run_dir / "checkpoints").glob("epoch_*.ckpt")
    return best


@pytest.mark.slow
def test_eval_of_the_best_checkpoint_reproduces_the_test_metrics_of_training(trained_run: Path, tmp_path: Path) -> None:
    rows = read_metrics(trained_run)
    args = [f"ckpt_path={best_checkpoint(trained_run)}", f"hydra.run.dir={tmp_path}", "extras.print_config=false"]
    result = run_entry("eval.py", args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((tmp_path / "test_metrics.json").read_text())
    assert metrics["test/acc"] == pytest.approx(last_logged(rows, "test/acc"), abs=1e-6)
    assert metrics["test/acc_top5"] == pytest.approx(last_logged(rows, "test/acc_top5"), abs=1e-6)
    assert metrics["test/loss"] == pytest.approx(last_logged(rows, "test/loss"), rel=1e-5)


@pytest.mark.slow
def test_overrides_of_single_keys_apply_on_top_of_the_runs_config(trained_run: Path, make_config) -> None:
    cfg = make_config(
        [f"ckpt_path={best_checkpoint(trained_run)}", "data.eval_batch_size=37", "logger=null"], config_name="eval.yaml"
    )
    metrics = evaluate(cfg)
    assert cfg.data._target_.endswith("SyntheticCIFAR100DataModule") and cfg.data.eval_batch_size == 37
    assert cfg.model.net.widths == [8, 16, 32, 64]
    assert metrics["test/acc"] == pytest.approx(last_logged(read_metrics(trained_run), "test/acc"), abs=1e-6)


@pytest.mark.slow
def test_a_group_choice_on_the_command_line_wins_over_the_runs_config(trained_run: Path, make_config) -> None:
    cfg = make_config(
        [f"ckpt_path={best_checkpoint(trained_run)}", "data=synthetic", "data.test_per_class=2", "logger=null"],
        config_name="eval.yaml",
    )
    evaluate(cfg)
    assert cfg.data.test_per_class == 2 and cfg.data.train_per_class == 60  # the config's, not the run's 30


def test_the_run_config_is_found_above_the_checkpoint(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("model: {tag: here}\n")
    nested = tmp_path / "csv" / "checkpoints" / "x.ckpt"
    nested.parent.mkdir(parents=True)
    assert training_run_config(nested).model.tag == "here"
    shutil.rmtree(tmp_path / ".hydra")
    assert training_run_config(nested) is None


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
