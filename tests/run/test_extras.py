"""`extras.enforce_tags`, as lightning-hydra-template users know it: a run without tags asks for them on a terminal,
is refused without one, and keeps its tags in the run folder's tags.log. Through `entry.run` and the training task,
as `python src/train.py` runs them."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import FEW_IMAGES, run_entry
from wrncifar.run.entry import run
from wrncifar.run.fit_and_test import train_for_sweep
from wrncifar.sweeps.summary import JOB_RESULT

# Everything a run sets up (config checks, extras, data and model, loggers with the run's config), no fit or test.
SET_UP_ONLY = [*FEW_IMAGES, "train=false", "test=false"]


class Terminal(io.StringIO):
    """Standard input attached to a terminal, with the user's answer typed in."""

    def isatty(self) -> bool:
        return True


def logged_tags(run_dir: Path) -> list[str]:
    """The tags of the config the run sent to its loggers."""
    return yaml.safe_load((run_dir / "csv" / "hparams.yaml").read_text())["tags"]


def test_tags_given_are_kept_in_the_run_folder(make_config, tmp_path: Path) -> None:
    run(train_for_sweep, make_config([*SET_UP_ONLY, "tags=[baseline,wide]"]))
    assert (tmp_path / "tags.log").read_text() == "['baseline', 'wide']\n"
    assert logged_tags(tmp_path) == ["baseline", "wide"]


@pytest.mark.parametrize("no_tags", ["tags=[]", "tags=null"])
def test_a_run_without_tags_and_no_terminal_is_refused_before_it_starts(
    make_config, monkeypatch, tmp_path: Path, no_tags: str
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # a batch job: nobody to ask
    with pytest.raises(SystemExit) as exit_info:
        run(train_for_sweep, make_config([*SET_UP_ONLY, no_tags]))
    assert exit_info.value.code == 1
    assert str(exit_info.value.__cause__) == (
        "extras.enforce_tags=true but the run has no tags, and there is no terminal to ask on: give them on the "
        "command line, e.g. tags=[baseline,wide], or set extras.enforce_tags=false"
    )
    assert not (tmp_path / "tags.log").exists() and not (tmp_path / "csv").exists()


@pytest.mark.parametrize(("answer", "tags"), [("baseline, wide\n", ["baseline", "wide"]), ("\n", ["dev"])])
def test_a_run_without_tags_asks_for_them_on_a_terminal(
    make_config, monkeypatch, tmp_path: Path, answer: str, tags: list[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", Terminal(answer))  # an empty answer takes the default, dev
    run(train_for_sweep, make_config([*SET_UP_ONLY, "tags=[]"]))
    assert (tmp_path / "tags.log").read_text() == f"{tags!r}\n"
    assert logged_tags(tmp_path) == tags


def test_without_enforce_tags_an_untagged_run_starts_and_writes_no_tags_log(
    make_config, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO())
    run(train_for_sweep, make_config([*SET_UP_ONLY, "tags=[]", "extras.enforce_tags=false"]))
    assert logged_tags(tmp_path) == [] and not (tmp_path / "tags.log").exists()


@pytest.mark.slow
def test_a_multirun_without_tags_is_refused_even_on_a_terminal(tmp_path: Path) -> None:
    result = run_entry("train.py", ["-m", *SET_UP_ONLY, "tags=[]", "seed=1,2", f"hydra.sweep.dir={tmp_path}"])
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "extras.enforce_tags=true but the run has no tags, and the jobs of a multirun cannot each ask" in output
    for job in ("0", "1"):
        assert json.loads((tmp_path / job / JOB_RESULT).read_text())["status"] == "failed"
        assert not (tmp_path / job / "tags.log").exists()
