"""The start-up clock behind the first-step line: phases in order, from the process's start for the first job and
from the job's start for a sweep's later jobs in the same process."""

from __future__ import annotations

import time

import psutil
import pytest

from wrncifar.callbacks import start_up


@pytest.fixture(autouse=True)
def fresh_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(start_up, "_clock", start_up._Clock())


def test_the_first_job_counts_from_the_process_start_and_later_jobs_from_their_own() -> None:
    start_up.begin_job()
    assert start_up.started_at() == (psutil.Process().create_time(), "the process")
    start_up.phase_done("hydra")
    ((label, seconds),) = start_up.phase_times()
    assert label == "Python and Hydra"
    assert seconds == pytest.approx(time.time() - psutil.Process().create_time(), abs=1.0)

    before = time.time()
    start_up.begin_job()  # a sweep's second job in this process
    started, since = start_up.started_at()
    assert since == "the job" and before <= started <= time.time()
    assert start_up.phase_times() == []  # the first job's phases are gone
    start_up.phase_done("hydra")
    assert 0 <= start_up.phase_times()[0][1] < time.time() - psutil.Process().create_time()


def test_phases_run_from_the_end_of_the_one_before_and_a_repeated_phase_drops_the_later_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([100.0, 103.0, 103.5, 110.0, 111.0])
    monkeypatch.setattr(start_up.time, "time", lambda: next(clock))
    start_up.begin_job()
    monkeypatch.setattr(start_up._clock, "start", 90.0)
    for name in ("hydra", "imports", "set-up", "data"):
        start_up.phase_done(name)
    assert start_up.phase_times() == [
        ("Python and Hydra", 10.0),
        ("imports", 3.0),
        ("config and set-up", 0.5),
        ("data", 6.5),
    ]
    start_up.phase_done("imports")  # recorded again: a second fit in the same job
    assert [label for label, _ in start_up.phase_times()] == ["Python and Hydra", "imports"]


def test_a_run_without_the_entry_script_says_its_first_phase_holds_all_before_it() -> None:
    start_up.phase_done("data")  # Lightning's callbacks, in a script that trains without src/train.py
    start_up.phase_done("model")
    (first, _), (second, _) = start_up.phase_times()
    assert (first, second) == ("data and all before it", "model set-up")


def test_an_unknown_phase_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown start-up phase 'compile'; known: hydra, imports"):
        start_up.phase_done("compile")


def test_a_resume_credits_the_imports_before_hydra_to_its_first_phase_in_its_first_job_only() -> None:
    start_up.imported_early()  # src/train.py, when resume= imported torch to read the run
    start_up.begin_job()
    start_up.phase_done("hydra")
    assert start_up.phase_times()[0][0] == "Python, Hydra and torch (imported to read the run to resume)"
    start_up.begin_job()  # a later job in the same process imports nothing before Hydra
    start_up.phase_done("hydra")
    assert start_up.phase_times()[0][0] == "Python and Hydra"
