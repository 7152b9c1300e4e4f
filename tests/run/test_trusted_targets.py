"""A run folder is data: the configs and overrides read from it may name only classes the project's configs name,
so opening a crafted folder with `eval.py` or `resume=` runs none of its code."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import CONFIGS, run_entry
from wrncifar.run.config_validation import ConfigError
from wrncifar.run.trusted_targets import check_override_targets, check_targets, project_targets


def test_the_project_configs_name_the_classes_a_run_needs() -> None:
    targets = project_targets(CONFIGS)
    assert {"wrncifar.models.wideresnet.WideResNet", "wrncifar.data.cifar100.CIFAR100DataModule"} <= targets
    assert "lightning.pytorch.trainer.Trainer" in targets and "builtins.exec" not in targets


def test_a_target_no_config_names_is_refused_by_its_key(tmp_path: Path) -> None:
    node = {"_target_": "wrncifar.models.classifier.ImageClassifier", "net": {"_target_": "torch.load"}}
    with pytest.raises(ConfigError, match=r"model\.net\._target_='torch\.load'.*add a config under configs/"):
        check_targets(node, "model", tmp_path / "config.yaml")
    check_targets({"_target_": "wrncifar.models.wideresnet.WideResNet"}, "model.net", tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match=r"model\.net\._target_='os\.system'"):
        check_override_targets(["trainer.max_epochs=3", "+model.net._target_=os.system"], tmp_path / "overrides.yaml")


MARKER_CODE = "open('{marker}', 'w').write('ran')"


@pytest.fixture
def crafted_run(trained_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of a training run whose saved config and overrides would run code: create a marker file."""
    run_dir, marker = tmp_path / "crafted", tmp_path / "marker"
    shutil.copytree(trained_run, run_dir)
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    config["model"]["net"] = {"_target_": "builtins.exec", "_args_": [MARKER_CODE.format(marker=marker)]}
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    overrides.append("+model.net._target_=builtins.exec")
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return run_dir, marker


@pytest.mark.slow
def test_eval_of_a_crafted_run_folder_runs_none_of_its_code(crafted_run: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, marker = crafted_run
    ckpt = next((run_dir / "checkpoints").glob("*.ckpt"))
    result = run_entry("eval.py", [f"ckpt_path={ckpt}", "logger=null", f"hydra.run.dir={tmp_path / 'eval'}"])
    assert result.returncode == 1
    out = result.stdout + result.stderr
    assert "names code this project's configs do not use (model.net._target_='builtins.exec')" in out
    assert "Traceback" not in out and not marker.exists()


@pytest.mark.slow
def test_resume_of_a_crafted_run_folder_runs_none_of_its_code(crafted_run: tuple[Path, Path]) -> None:
    run_dir, marker = crafted_run
    result = run_entry("train.py", [f"resume={run_dir}", "trainer.max_epochs=5"])
    assert result.returncode == 1
    assert "model.net._target_='builtins.exec'" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists() and not (run_dir / ".hydra" / "history").exists(), "nothing in the folder changed"
