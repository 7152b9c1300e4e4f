"""Train a model: `python src/train.py experiment=wrn_cifar100` (see README for overrides and sweeps)."""

from __future__ import annotations

import os
import sys

from wrncifar.run.project_root import project_environment

# First, before torch loads: `paths.root_dir` resolves to the checkout holding this file, wherever the command is
# run from, and the checkout's `.env` adds the variables the environment does not set (README: Machine settings).
os.environ.update(project_environment(__file__))

import hydra
from omegaconf import DictConfig

from wrncifar.callbacks.early_signals import SweepStopped, record_early_signals
from wrncifar.callbacks.start_up import begin_job, imported_early, phase_done
from wrncifar.run.command_line import hydra_arguments


@hydra.main(version_base="1.3", config_path="../configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    begin_job()
    phase_done("hydra")
    # Imported here, once Hydra has read the command line: torch and Lightning take seconds to load, and a
    # mistyped key or option should not wait for them.
    from wrncifar.run.entry import run
    from wrncifar.run.fit_and_test import train_for_sweep

    phase_done("imports")
    return run(train_for_sweep, cfg)


if __name__ == "__main__":
    record_early_signals()  # SLURM's SIGUSR1 or SIGTERM during start-up stops the run cleanly once training starts
    sys.argv[1:] = hydra_arguments(sys.argv[1:], resumable=True)
    if "torch" in sys.modules:  # resume= read the run's checkpoints: the start-up line credits the import to it
        imported_early()
    try:
        main()
    except SweepStopped as stop:  # SIGTERM to a sweep's own process (hydra/launcher=local|slurm): no traceback
        print(stop, file=sys.stderr)
        sys.exit(128 + stop.signum)  # as a process ended by the signal
