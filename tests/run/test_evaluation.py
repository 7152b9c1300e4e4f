"""`python src/eval.py ckpt_path=…` and `evaluate(cfg)`: test a checkpoint with its training run's config."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException

from tests.conftest import best_checkpoint, last_logged, read_metrics, run_entry
from wrncifar.analysis.evaluation_report import PREDICTIONS_FILE, REPORT_FILE, read_report
from wrncifar.data.synthetic import SyntheticCIFAR100DataModule
from wrncifar.run.config_validation import ConfigError
from wrncifar.run.entry import run
from wrncifar.run.evaluation import adopt_training_run_config, evaluate, report_directory
from wrncifar.run.training_run import run_config_keys, training_run_config
from wrncifar.sweeps.api_key import REDACTED

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_eval_of_the_best_checkpoint_reproduces_the_test_metrics_of_training(
    trained_run: Path, evaluated_run: Path
) -> None:
    rows = read_metrics(trained_run)
    metrics = json.loads((evaluated_run / "test_metrics.json").read_text())
    assert metrics["ckpt_path"] == str(best_checkpoint(trained_run).resolve())
    assert metrics["test/acc"] == pytest.approx(last_logged(rows, "test/acc"), abs=1e-6)
    assert metrics["test/acc_top5"] == pytest.approx(last_logged(rows, "test/acc_top5"), abs=1e-6)
    assert metrics["test/loss"] == pytest.approx(last_logged(rows, "test/loss"), rel=1e-5)


@pytest.mark.slow
def test_eval_writes_the_report_json_predictions_and_plots_with_flip_tta_beside_the_plain_result(
    evaluated_run: Path,
) -> None:
    report_dir = evaluated_run / "report"
    plots = ["confusion_matrix", "reliability", "class_accuracy"]  # no superclasses in the synthetic data
    expected = {REPORT_FILE, PREDICTIONS_FILE} | {f"{p}.png" for p in plots} | {f"{p}_flip.png" for p in plots}
    assert {p.name for p in report_dir.iterdir()} == expected
    assert all((report_dir / name).read_bytes().startswith(PNG_SIGNATURE) for name in expected if name.endswith(".png"))
    report = read_report(report_dir)
    assert report["tta"] == "flip" and list(report["results"]) == ["plain", "flip"]
    assert report["data"]["_target_"].endswith("SyntheticCIFAR100DataModule")


@pytest.mark.slow
def test_eval_prints_plain_progress_to_a_file_and_no_warning_about_the_training_checkpoint_folder(
    evaluated_run: Path,
) -> None:
    printed = (evaluated_run / "console.txt").read_text()
    assert "The dirpath has changed" not in printed  # a checkpoint callback restored from training's state
    assert not re.search(r"Testing\S* +━", printed)  # no Rich bar frames where the console is a file


@pytest.mark.slow
def test_the_reports_plain_pass_reproduces_the_test_metrics(evaluated_run: Path) -> None:
    """The report's own pass over the test set sees the same images and weights as `trainer.test`."""
    metrics = json.loads((evaluated_run / "test_metrics.json").read_text())
    plain = read_report(evaluated_run / "report")["results"]["plain"]
    assert plain["top1"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert plain["top5"] == pytest.approx(metrics["test/acc_top5"], abs=1e-6)
    assert plain["loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)  # trained without label smoothing


def test_the_report_goes_next_to_the_training_run_unless_a_folder_is_given(tmp_path: Path) -> None:
    run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("model: {}\n")
    ckpt = run_dir / "checkpoints" / "epoch_007.ckpt"
    output_dir = tmp_path / "eval_output"
    assert report_directory(None, ckpt, output_dir) == run_dir.resolve() / "eval_report" / "epoch_007"
    assert report_directory(str(elsewhere), ckpt, output_dir) == elsewhere
    loose = elsewhere / "last.ckpt"  # no training run above it
    assert report_directory(None, loose, output_dir) == output_dir / "eval_report" / "last"


def test_an_unknown_tta_mode_stops_eval_with_exit_1_and_names_the_key(make_config, tmp_path: Path) -> None:
    ckpt = tmp_path / "x.ckpt"
    ckpt.touch()
    with pytest.raises(SystemExit) as exit_info:
        run(evaluate, make_config([f"ckpt_path={ckpt}", "eval.tta=bogus"], config_name="eval.yaml"))
    assert exit_info.value.code == 1
    assert "eval.tta: expected one of ['none', 'flip'], got 'bogus'" in str(exit_info.value.__cause__)


def test_the_report_refuses_several_processes_before_testing(make_config, tmp_path: Path) -> None:
    ckpt = tmp_path / "x.ckpt"
    ckpt.touch()  # never read: the check comes first
    overrides = [f"ckpt_path={ckpt}", "model=wrn_tiny", "data=synthetic", "trainer=ddp_cpu", "logger=null"]
    with pytest.raises(ConfigError, match=r"runs in one process, but the trainer has 2: .*eval.report=false"):
        evaluate(make_config(overrides, config_name="eval.yaml"))


@pytest.mark.slow
def test_overrides_of_single_keys_apply_on_top_of_the_runs_config(trained_run: Path, make_config) -> None:
    cfg = make_config(
        [f"ckpt_path={best_checkpoint(trained_run)}", "data.eval_batch_size=37", "logger=null", "eval.report=false"],
        config_name="eval.yaml",
    )
    metrics = evaluate(cfg)
    assert cfg.data._target_.endswith("SyntheticCIFAR100DataModule") and cfg.data.eval_batch_size == 37
    assert cfg.model.net.widths == [8, 16, 32, 64]
    assert metrics["test/acc"] == pytest.approx(last_logged(read_metrics(trained_run), "test/acc"), abs=1e-6)


@pytest.mark.slow
def test_a_group_choice_on_the_command_line_wins_over_the_runs_config(trained_run: Path, make_config) -> None:
    cfg = make_config(
        [
            f"ckpt_path={best_checkpoint(trained_run)}",
            "data=synthetic",
            "data.test_per_class=2",
            "logger=null",
            "eval.report=false",
        ],
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
    ("saved", "message"),
    [
        ("model: {net: [unclosed\n", "cannot be read (ParserError: while parsing a flow sequence)"),
        ("model: 5\n", "has a model that is not a config (int)"),
        ("data:\n  data_dir: ${oc.env:NO_SUCH_DIR_X}\n", "data.data_dir of the training run's saved config"),
    ],
)
def test_a_damaged_or_unresolvable_run_config_is_one_message_naming_the_file(
    make_config, tmp_path: Path, saved: str, message: str
) -> None:
    """The saved config is data from disk: a run folder damaged, or copied from a machine with other variables."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(saved)
    cfg = make_config([f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"], config_name="eval.yaml", speed=False)
    with pytest.raises(ConfigError, match=re.escape(message)) as refused:
        adopt_training_run_config(cfg, run_dir / "checkpoints" / "last.ckpt")
    assert str(run_dir / ".hydra" / "config.yaml") in str(refused.value)
    assert "or give model=… and data=… on the command line" in str(refused.value)


def test_eval_without_a_checkpoint_fails_with_a_clear_message(make_config) -> None:
    with pytest.raises(ConfigError, match=r"ckpt_path is required: python src/eval\.py ckpt_path="):
        evaluate(make_config(["ckpt_path=null"], config_name="eval.yaml"))


def test_a_ckpt_path_that_is_not_a_file_says_what_it_is_with_exit_1(
    trained_run: Path, make_config, tmp_path: Path
) -> None:
    """train.py's message (`check_checkpoint_path`): a run's folder names the checkpoints it holds (and not
    resume=, which eval.py does not take)."""
    folder = f"checkpoint {trained_run} is a folder, not a checkpoint file: pass the path of a .ckpt file in "
    for given, messages in [
        (trained_run, [folder + f"{trained_run / 'checkpoints'} (", "last.ckpt"]),
        (tmp_path / "gone.ckpt", [f"checkpoint {tmp_path / 'gone.ckpt'} does not exist: pass the path of a .ckpt"]),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            run(evaluate, make_config([f"ckpt_path={given}"], config_name="eval.yaml"))
        assert exit_info.value.code == 1
        assert all(message in str(exit_info.value.__cause__) for message in messages), exit_info.value.__cause__
        assert "resume=" not in str(exit_info.value.__cause__)


def test_a_checkpoint_of_another_architecture_is_refused_with_the_differences(trained_run: Path, make_config) -> None:
    from wrncifar.run.checkpoints import CheckpointError

    cfg = make_config(
        [f"ckpt_path={best_checkpoint(trained_run)}", "model.net.widths=[8,16,32,32]", "logger=null"],
        config_name="eval.yaml",
    )
    with pytest.raises(CheckpointError, match=r"different network .*different shape: .*vs model"):
        evaluate(cfg)


@pytest.mark.slow
def test_the_seeds_own_plain_state_dict_is_evaluated_with_the_seed_pooling(tmp_path: Path) -> None:
    from tests.seed_wideresnet import WideResNet as SeedWideResNet

    torch.manual_seed(0)
    seed = SeedWideResNet(100).eval()
    weights = tmp_path / "seed_weights.pt"
    torch.save({f"module.{k}": v for k, v in seed.state_dict().items()}, weights)  # saved from nn.DataParallel
    out = tmp_path / "eval"
    data = ["data=synthetic", "data.train_per_class=2", "data.val_per_class=1", "data.test_per_class=1"]
    args = [f"ckpt_path={weights}", "model.net.pooling=seed", *data, "trainer=cpu", "eval.report=false", "logger=null"]
    # A W&B API key that the checkpoint's path happens to contain is not written out with it.
    result = run_entry("eval.py", [*args, f"hydra.run.dir={out}"], env={"WANDB_API_KEY": "seed_weights"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "holds plain network weights: testing them in the configured model" in result.stdout + result.stderr
    assert json.loads((out / "test_metrics.json").read_text())["ckpt_path"] == str(tmp_path / f"{REDACTED}.pt")

    # The same images through the seed's own network give the same accuracy.
    dm = SyntheticCIFAR100DataModule(train_per_class=2, val_per_class=1, test_per_class=1, num_workers=0)
    dm.setup("test")
    with torch.no_grad():
        correct = sum(int((seed(x).argmax(1) == y).sum()) for x, y in dm.test_dataloader())
    assert json.loads((out / "test_metrics.json").read_text())["test/acc"] == pytest.approx(correct / 100)


@pytest.mark.slow
def test_a_report_folder_that_is_a_link_is_refused_and_its_target_untouched(trained_run: Path, tmp_path: Path) -> None:
    run_dir, elsewhere = tmp_path / "run", tmp_path / "another_run_folder"
    shutil.copytree(trained_run, run_dir)
    elsewhere.mkdir()
    (run_dir / "eval_report").symlink_to(elsewhere, target_is_directory=True)
    ckpt = best_checkpoint(run_dir)
    result = run_entry("eval.py", [f"ckpt_path={ckpt}", "logger=null", f"hydra.run.dir={tmp_path / 'eval'}"])
    assert result.returncode == 1
    out = result.stdout + result.stderr
    assert f"{run_dir / 'eval_report'} is a symbolic link: outputs are not written through it" in out
    assert "Traceback" not in out and list(elsewhere.iterdir()) == []


def test_a_report_dir_that_is_a_file_is_one_message(make_config, trained_run: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    cfg = make_config(
        [f"ckpt_path={best_checkpoint(trained_run)}", f"eval.report_dir={a_file}"], config_name="eval.yaml"
    )
    with pytest.raises(SystemExit) as exit_info:
        run(evaluate, cfg)
    assert exit_info.value.code == 1 and f"{a_file} is a file, not a folder" in str(exit_info.value.__cause__)
    assert a_file.read_text() == "mine"
    assert not (Path(cfg.paths.output_dir) / "test_metrics.json").exists(), "refused before testing"


@pytest.mark.slow
def test_a_report_folder_holding_other_files_is_refused_before_testing_and_left_as_it_is(
    make_config, trained_run: Path, evaluated_run: Path, tmp_path: Path
) -> None:
    """Files named as a report's are not enough: the `report.json` must be one that eval wrote."""
    lookalike, beside = tmp_path / "lookalike", tmp_path / "beside"
    lookalike.mkdir()
    (lookalike / REPORT_FILE).write_text('{"results": "my own"}')
    (lookalike / "confusion_matrix.png").write_bytes(PNG_SIGNATURE + b"my own plot")
    shutil.copytree(evaluated_run / "report", beside)  # an earlier report, and a file of the user's beside it
    (beside / "notes.txt").write_text("mine")
    for folder, named in [(lookalike, "confusion_matrix.png, report.json"), (beside, "notes.txt")]:
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        cfg = make_config(
            [f"ckpt_path={best_checkpoint(trained_run)}", f"eval.report_dir={folder}", "logger=null"],
            config_name="eval.yaml",
        )
        with pytest.raises(SystemExit) as exit_info:
            run(evaluate, cfg)
        assert exit_info.value.code == 1
        assert (
            f"the report folder {folder} holds files that are not an earlier evaluation report ({named}), so it was "
            "left as it is and nothing was evaluated: remove them, or give another folder with eval.report_dir="
        ) in str(exit_info.value.__cause__)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not (tmp_path / "test_metrics.json").exists(), "refused before testing"


@pytest.mark.slow
def test_eval_run_again_replaces_its_own_earlier_report_in_the_runs_folder(
    make_config, trained_run: Path, evaluated_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain report replacing a flip one keeps none of its `*_flip.png`, nor a killed write's temporary file;
    what Finder leaves in a folder it showed is kept."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("eval_report"))
    ckpt = best_checkpoint(run_dir)
    report_dir = run_dir / "eval_report" / ckpt.stem
    shutil.copytree(evaluated_run / "report", report_dir)
    (report_dir / ".DS_Store").write_bytes(b"Finder")
    (report_dir / ".predictions.npz.x1y2z3.npz").write_bytes(b"half")  # left by an eval killed mid-write
    with caplog.at_level(logging.INFO):
        evaluate(make_config([f"ckpt_path={ckpt}", "+data.test_per_class=1", "logger=null"], config_name="eval.yaml"))
    assert f"Replacing the evaluation report in {report_dir}, written by an earlier run of eval.py" in caplog.text
    plots = ["confusion_matrix.png", "reliability.png", "class_accuracy.png"]
    assert {p.name for p in report_dir.iterdir()} == {REPORT_FILE, PREDICTIONS_FILE, *plots, ".DS_Store"}
    assert read_report(report_dir)["tta"] == "none"


@pytest.mark.slow
def test_a_key_of_the_runs_own_data_config_is_overridden_as_typed(trained_run: Path, make_config) -> None:
    """`data.test_per_class=1` for a run trained with `data=synthetic`: Hydra composes eval.yaml's own data option
    (cifar100, which has no such key) first, and refuses it as typed without `run_config_keys`."""
    typed = [f"ckpt_path={best_checkpoint(trained_run)}", "data.test_per_class=1", "logger=null", "eval.report=false"]
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'data\.test_per_class'"):
        make_config(typed, config_name="eval.yaml")
    cfg = make_config(run_config_keys(typed), config_name="eval.yaml")
    evaluate(cfg)
    assert cfg.data.test_per_class == 1 and cfg.data.train_per_class == 30  # the override, on the run's config
    # A key that neither config has is still Hydra's own error.
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'data\.test_pre_class'"):
        make_config(run_config_keys([*typed, "data.test_pre_class=1"]), config_name="eval.yaml")
