"""Where a run's start-up time goes: the phases between the start of the process (or of a sweep's job) and the
first training step, each recorded as it ends, read by `wrncifar.callbacks.epoch_summary.EpochSummary`.

No torch or Lightning here: `src/train.py` records its first phases before they are imported.
"""

from __future__ import annotations

import time

import psutil

# The phases in the order a run goes through them; each is recorded by the code that ends it.
PHASES = {
    "hydra": "Python and Hydra",  # src/train.py, once Hydra has composed the config
    "imports": "imports",  # src/train.py: torch, Lightning, the project
    "set-up": "config and set-up",  # wrncifar.run.fit_and_test, just before fit: checks, model, loggers, trainer
    "data": "data",  # EpochSummary.setup: the datamodule's prepare_data and setup (reading the arrays)
    "model": "model set-up",  # EpochSummary.on_fit_start: compile wrapping, to the device, DDP, optimizer
    "sanity": "sanity validation",  # EpochSummary.on_sanity_check_end
    "train-data": "training data",  # EpochSummary.on_train_start: the loader (on-device: the copy), restored state
    "step": "the step",  # EpochSummary, after the first training batch (and a device sync)
}


class _Clock:
    def __init__(self) -> None:
        self.start: float | None = None  # None: from the start of the process
        self.jobs = 0
        self.marks: dict[str, float] = {}
        self.imports_first = False  # torch and the project were imported before Hydra started (`imported_early`)


_clock = _Clock()


def begin_job() -> None:
    """Start the clock of a job: the first one in a process counts from the process's start, a sweep's later jobs
    (run one after the other in the same process) from now."""
    _clock.jobs += 1
    _clock.start = None if _clock.jobs == 1 else time.time()
    _clock.marks = {}
    _clock.imports_first = _clock.imports_first and _clock.jobs == 1


def imported_early() -> None:
    """Record that the command imported torch and the project before Hydra started (`resume=` reads the run's
    checkpoints to expand its command line): the first phase holds those imports, and its label says so."""
    _clock.imports_first = True


def phase_done(name: str) -> None:
    """Record that the start-up phase `name` (a key of `PHASES`) ended now; a phase recorded again (a second fit in
    the same job) drops the marks of the phases after it."""
    if name not in PHASES:
        raise ValueError(f"unknown start-up phase {name!r}; known: {', '.join(PHASES)}")
    order = list(PHASES)
    _clock.marks = {k: v for k, v in _clock.marks.items() if order.index(k) < order.index(name)}
    _clock.marks[name] = time.time()


def started_at() -> tuple[float, str]:
    """When the clock started (seconds since the epoch) and since what: "the process" or "the job"."""
    if _clock.start is None:
        return psutil.Process().create_time(), "the process"
    return _clock.start, "the job"


def phase_times() -> list[tuple[str, float]]:
    """The recorded phases as (label, seconds), in order. A phase's time runs from the end of the phase recorded
    before it; the first one recorded also holds everything before it that was not (a script that trains
    without `src/train.py` records no imports), and says so."""
    start, _ = started_at()
    times = []
    previous = start
    for name, label in PHASES.items():
        if name not in _clock.marks:
            continue
        at = _clock.marks[name]
        if not times and name != "hydra":
            label = f"{label} and all before it"
        elif name == "hydra" and _clock.imports_first:
            label = "Python, Hydra and torch (imported to read the run to resume)"
        times.append((label, at - previous))
        previous = at
    return times
