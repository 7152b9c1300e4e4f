import json
import shutil
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from tests.conftest import run_entry
from wrncifar.run.command_line import null_group_overrides, quote_path


def test_null_for_a_switchable_group_becomes_a_deletion_and_nothing_else_changes() -> None:
    args = ["logger=null", "callbacks=null", "ckpt_path=null", "model.net.dropout=0.1", "logger.csv.name=null"]
    assert null_group_overrides(args) == ["~logger", "~callbacks", *args[2:]]


# Names a user's folders may have: spaces, a comma (Hydra's sweep separator), brackets, parentheses, `=`,
# quotes and non-ASCII letters.
AWKWARD = ["run a", "runs,2", "run [x]", "run (1)", "lr=0.1", "it's", "résumé", "a{b}", "back\\slash"]


@pytest.mark.parametrize("name", AWKWARD)
def test_a_path_is_read_as_typed_whatever_its_characters(name: str) -> None:
    path = f"/data/{name}/last.ckpt"
    for key in ("ckpt_path", "data.data_dir", "paths.log_dir", "+eval.report_dir", "resume"):
        quoted = quote_path(f"{key}={path}")
        assert OverridesParser.create().parse_override(quoted).value() == path
        assert quote_path(quoted) == quoted  # quoting twice changes nothing


def test_an_entry_points_own_path_keys_are_read_as_typed() -> None:
    """predict.py's `input`/`output` and export.py's `output`: paths there, not keys of the other entry points."""
    path = "/photos/holiday 2026, day [1]/it's.png"
    for key in ("input", "output"):
        quoted = quote_path(f"{key}={path}", ("input", "output"))
        assert OverridesParser.create().parse_override(quoted).value() == path
    assert quote_path(f"input={path}") == f"input={path}"  # not a path key unless the entry point says so


def test_other_values_and_explicit_sweeps_are_left_as_typed() -> None:
    for arg in ["model.net.widths=[1,2]", "seed=1,2", "ckpt_path=null", "data.data_dir=choice('a','b')", "x=${y}"]:
        assert quote_path(arg) == arg


@pytest.fixture(scope="module")
def awkward_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of a training run in a folder named with every awkward character at once."""
    run_dir = tmp_path_factory.mktemp("awkward") / "runs,2 [x] (1) lr=0.1 it's résumé"
    shutil.copytree(trained_run, run_dir)
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("quoting", ["unquoted", "quoted"])
def test_eval_takes_a_checkpoint_in_an_awkwardly_named_folder(awkward_run: Path, tmp_path: Path, quoting: str) -> None:
    ckpt = str(awkward_run / "checkpoints" / "last.ckpt")
    value = ckpt if quoting == "unquoted" else "'" + ckpt.replace("'", "\\'") + "'"
    out = tmp_path / "eval (out)"
    result = run_entry("eval.py", [f"ckpt_path={value}", "eval.report=false", "logger=null", f"hydra.run.dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "test_metrics.json").read_text())["ckpt_path"] == ckpt


@pytest.mark.slow
def test_relative_paths_are_read_from_the_launch_folder_even_when_the_job_changes_folder(
    trained_run: Path, tmp_path: Path
) -> None:
    shutil.copytree(trained_run, tmp_path / "base")
    args = ["ckpt_path=base/checkpoints/last.ckpt", "hydra.job.chdir=true", "eval.report=false", "logger=null"]
    result = run_entry("eval.py", [*args, "hydra.run.dir=out"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "test_metrics.json").read_text())
    assert metrics["ckpt_path"] == str(tmp_path / "base" / "checkpoints" / "last.ckpt")

    missing = run_entry(
        "eval.py", ["ckpt_path=gone/last.ckpt", "hydra.job.chdir=true", "hydra.run.dir=out2"], cwd=tmp_path
    )
    assert missing.returncode == 1
    assert f"checkpoint {tmp_path / 'gone' / 'last.ckpt'} does not exist" in missing.stdout + missing.stderr

    # `~` as a shell would expand it (none expands it in an argument such as `data.data_dir=~/…`).
    args[0] = "ckpt_path=~/base/checkpoints/last.ckpt"
    home = run_entry("eval.py", [*args, "hydra.run.dir=out3"], cwd=tmp_path / "base", env={"HOME": str(tmp_path)})
    assert home.returncode == 0, home.stderr[-3000:]
    assert json.loads((tmp_path / "base" / "out3" / "test_metrics.json").read_text())["ckpt_path"] == str(
        tmp_path / "base" / "checkpoints" / "last.ckpt"
    )
