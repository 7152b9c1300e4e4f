"""The wrapper both entry points run their task in: set-up, one clear message for user errors, the job's record
in a sweep, clean-up."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TypeVar

from hydra.errors import InstantiationException
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from wrncifar.analysis.output_files import OutputFolderError
from wrncifar.callbacks.non_finite_loss import NonFiniteLossError
from wrncifar.data.arrays import DataSettingsError
from wrncifar.data.cifar100_sources import CorruptDatasetError, DatasetNotFoundError
from wrncifar.data.device_batches import DeviceMemoryError
from wrncifar.models.compilation import CompileUnavailableError
from wrncifar.run.checkpoints import CheckpointError, CheckpointWriteError
from wrncifar.run.command_line import absolute_paths
from wrncifar.run.config_validation import ConfigError
from wrncifar.run.distributed import log_files_on_rank_zero_only
from wrncifar.run.fit_and_test import NonFiniteMetricError
from wrncifar.run.folder_lock import FolderInUseError, hold_run_folder
from wrncifar.run.resuming import restore_run_config
from wrncifar.run.run_folder import remove_if_nothing_ran
from wrncifar.run.tracking import redact_secrets_in_logs
from wrncifar.sweeps.summary import in_multirun, record_job_result

log = logging.getLogger(__name__)

T = TypeVar("T")

# Mistakes in the user's input: their message says what to fix, so a traceback would only hide it.
# Hydra's InstantiationException carries the constructor's own ValueError and the config key.
USER_ERRORS = (
    ConfigError,
    DatasetNotFoundError,
    CorruptDatasetError,
    DeviceMemoryError,
    CompileUnavailableError,
    CheckpointError,
    CheckpointWriteError,
    NonFiniteLossError,
    NonFiniteMetricError,
    FolderInUseError,
    OutputFolderError,
    DataSettingsError,
    InstantiationException,
)


def run(task: Callable[[DictConfig], T], cfg: DictConfig) -> T | None:
    """Run `task(cfg)`; exit 1 with the message alone for user errors, log and re-raise anything else.

    In a multirun, a failed job is recorded (see `wrncifar.sweeps.summary`) and returns None instead, so that the
    other jobs still run; the sweep exits 1 at its end. A signal stops the whole sweep.
    """
    multirun = in_multirun()
    log_files_on_rank_zero_only()
    redact_secrets_in_logs()
    failed = True  # until the task returns
    try:
        # Rank 0 holds the run folder; under DDP the other ranks work in the same one.
        with hold_run_folder(cfg.paths.output_dir) if rank_zero_only.rank == 0 else nullcontext():
            absolute_paths(cfg)
            result = task(cfg)
        failed = False
    except USER_ERRORS as err:
        log.error("%s", err)
        if multirun:
            return _failed_job(cfg, err)
        folder = Path(cfg.paths.output_dir)
        if rank_zero_only.rank == 0 and cfg.get("resume"):
            restore_run_config(folder)
        elif rank_zero_only.rank == 0 and remove_if_nothing_ran(folder, f"{cfg.get('task_name', 'train')}.log"):
            log.info("Nothing ran: the run folder %s (its configs and this log) was removed", folder)
        raise SystemExit(1) from err
    except SIGTERMException as err:  # preempted: `CheckpointOnSignal` saved last.ckpt and set the signal
        signum, folder = getattr(err, "signum", signal.SIGTERM), cfg.paths.output_dir
        name = signal.Signals(signum).name
        if getattr(err, "requeued", False):
            log.warning("Stopped by %s; the SLURM job is requeued and continues in %s", name, folder)
        elif getattr(err, "after_training", False):
            log.warning(
                "Stopped by %s after training had ended, during the test: the checkpoints in %s/checkpoints are "
                "whole; test the best one with python src/eval.py ckpt_path=<it>",
                name,
                folder,
            )
        elif not getattr(err, "saved", True):
            log.warning(
                "Stopped by %s before training started: nothing was saved; run the same command again (with a "
                "hydra.run.dir of its own if it gave one: the loggers may have started files in %s)",
                name,
                folder,
            )
        else:
            log.warning("Stopped by %s; resume with resume=%s", name, folder)
        raise SystemExit(128 + signum) from err
    except Exception as err:
        if multirun:  # the traceback goes to the job's log; Hydra would otherwise stop the sweep with it
            where = cfg.paths.output_dir
            log.exception("Job failed (%s: %s); its outputs so far are in %s", type(err).__name__, err, where)
            return _failed_job(cfg, err)
        # Hydra prints the traceback next; the log file gets the one-line summary.
        log.error("Run failed (%s: %s); its outputs so far are in %s", type(err).__name__, err, cfg.paths.output_dir)
        raise
    finally:
        _finish_wandb(failed)
    if multirun:
        record_job_result(cfg.paths.output_dir, result)
    return result


def _failed_job(cfg: DictConfig, err: BaseException) -> None:
    record_job_result(cfg.paths.output_dir, None, err)
    return None


def _finish_wandb(failed: bool) -> None:
    """Close a W&B run so the next job of a multirun starts its own; a failed run is marked so on its dashboard."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)
