"""The set-up of a Hydra multirun and of each of its jobs (a Hydra callback).

Before the sweep: the folder of an SQLite Optuna study, which SQLite does not create; and, for a sweep refused
before any job runs (a stored study's other settings, a mistyped direction, a job config Hydra cannot compose), the
removal at exit of the folders the command made (`hydra.sweep.dir` and the study's folder) while they hold nothing
but Hydra's `multirun.yaml`. In each job, under `hydra/launcher=local` (submitit's local executor): one GPU of those
the launcher makes visible per one-device job.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"
# What Hydra's grid sweeper writes to `hydra.sweep.dir` before it composes the jobs, and may leave alone there.
MULTIRUN_YAML = "multirun.yaml"


class SweepSetup(Callback):
    """Hydra callback: prepares a multirun and its jobs (see the module docstring)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = resolved_folder(config, "hydra.sweep.dir")
        made = [new_folder(sweep_dir)] if sweep_dir else []
        storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
        if isinstance(storage, str) and storage.startswith(SQLITE_PREFIX):
            # SQLite creates the database file but not its folder; logs/ may not exist yet.
            study_folder = Path(storage[len(SQLITE_PREFIX) :]).expanduser().absolute().parent
            made.append(new_folder(study_folder))
            study_folder.mkdir(parents=True, exist_ok=True)
        made_here = [folder for folder in made if folder is not None]
        if sweep_dir and made_here:
            atexit.register(remove_unused_folders, made_here, sweep_dir)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        pin_one_gpu_per_job(config)


def resolved_folder(config: DictConfig, key: str) -> Path | None:
    """The absolute folder `config`'s `key` names (`hydra.run.dir`), resolved here as Hydra will resolve it
    ("${now:…}" may differ by microseconds: the same parents); None while only Hydra can resolve it."""
    try:
        return Path(str(OmegaConf.select(config, key, throw_on_missing=True))).expanduser().absolute()
    except Exception:  # noqa: BLE001 - a key only Hydra can resolve yet: Hydra reports its own problems
        return None


def new_folder(folder: Path) -> Path | None:
    """The outermost folder on `folder`'s path that does not exist yet (what making `folder` creates), or None."""
    if folder.exists() or folder.is_symlink():
        return None
    while not folder.parent.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def remove_unused_folders(folders: list[Path], sweep_dir: Path) -> list[Path]:
    """Remove each of `folders` (made by this command) that holds nothing but folders and the sweep's
    MULTIRUN_YAML: the sweep was refused before any job ran or any study was stored. A folder with anything else
    in it (a job's files, a study's database, a file of the user's, a link) stays. Returns those removed."""
    removed = []
    for folder in folders:
        if folder.is_symlink() or not folder.is_dir():
            continue
        if any(p.is_symlink() or (not p.is_dir() and p != sweep_dir / MULTIRUN_YAML) for p in folder.rglob("*")):
            continue
        shutil.rmtree(folder)
        removed.append(folder)
        log.info("Nothing ran: %s, made by this command, was removed", folder)
    return removed


def pin_one_gpu_per_job(config: DictConfig) -> None:
    """Under submitit's local executor, make only GPU `job number mod visible GPUs` visible to a one-device job.

    submitit shows every job the same `gpus_per_node` GPUs; jobs launched together (a batch of
    `hydra.sweeper.max_batch_size`, or Optuna's `n_jobs`, equal to the number of GPUs) have consecutive numbers,
    so each gets its own GPU. Runs before the job touches CUDA.
    """
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    trainer = config.get("trainer") or {}
    if os.environ.get("SUBMITIT_EXECUTOR") != "local" or len(visible) < 2 or trainer.get("devices") != 1:
        return
    gpu = visible[int(config.hydra.job.num) % len(visible)]
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    log.info("Job %s runs on GPU %s (of %s)", config.hydra.job.num, gpu, ",".join(visible))
