"""The project's submitit launchers, `hydra/launcher=local|slurm|slurm_cpu` (configs/hydra/launcher/): those of
hydra-submitit-launcher, with the launch of `wrncifar.sweeps.submitit_jobs` (a job without a result does not abort
the sweep; a request SLURM refuses gets one clear message; the jobs still out when the sweep stops are cancelled),
stop signals recorded from the start of each job, and SIGTERM to the sweep's own process stopping it as Ctrl-C does
(`wrncifar.callbacks.early_signals`).

They live here because Hydra instantiates launchers only from its `hydra_plugins` package. Hydra imports this
module at every start: nothing heavy at the top.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher import submitit_launcher


class _ProjectLauncher(submitit_launcher.BaseSubmititLauncher):
    def setup(self, **kwargs: Any) -> None:  # runs in the sweep's own process only: the jobs get the set-up launcher
        from wrncifar.callbacks.early_signals import stop_sweep_on_sigterm

        super().setup(**kwargs)
        stop_sweep_on_sigterm()

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:  # runs in the job's own process
        from wrncifar.callbacks.early_signals import record_early_signals

        record_early_signals()
        return super().__call__(*args, **kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from wrncifar.sweeps.submitit_jobs import launch

        return launch(self, job_overrides, initial_job_idx)


class LocalLauncher(_ProjectLauncher):
    _EXECUTOR = "local"


class SlurmLauncher(_ProjectLauncher):
    _EXECUTOR = "slurm"
