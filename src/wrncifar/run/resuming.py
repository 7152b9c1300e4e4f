"""`resume=<run_dir>`: rerun a training run's own command in its own folder, from its furthest valid checkpoint."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, open_dict

from wrncifar.callbacks.checkpoint_on_signal import SLURM_JOB_KEY, TORCHRUN_LAUNCH_KEY, slurm_job
from wrncifar.callbacks.torchrun import torchrun_launch, torchrun_restarts
from wrncifar.run.checkpoints import CheckpointError, furthest_valid_checkpoint, load_checkpoint
from wrncifar.run.config_validation import ConfigError
from wrncifar.run.folder_lock import check_folder_free, launching_process
from wrncifar.run.training_run import run_folder_of
from wrncifar.run.trusted_targets import check_override_targets

log = logging.getLogger(__name__)

# Overrides of the first command that the resumed command sets itself.
OWN_KEYS = ("resume", "ckpt_path", "init_from", "hydra.run.dir")
# Overrides that made the first command a sweep: a job of a sweep resumes as a single run in its own folder, and
# the sweep (an Optuna study above all) is left as it is.
SWEEP_KEYS = ("hparams_search", "hydra/sweeper", "hydra.sweeper", "hydra/launcher", "hydra.launcher", "hydra.mode")


def resume_overrides(args: list[str]) -> list[str]:
    """With `resume=<run_dir>` among `args`: the run's saved overrides, then the other `args` (which win), then
    `hydra.run.dir=<run_dir>` so that outputs, logs and checkpoints continue in the same folder. A job of a sweep
    resumes as a single run: the overrides that made its command a sweep (`SWEEP_KEYS`) are left out.

    Raises CheckpointError when `<run_dir>` is not a training run's folder (`check_run_folder`), ConfigError when
    its saved overrides name code the project's configs do not use, FolderInUseError while a run is still running
    in it; only then is the run's saved config archived (`archive_run_config`), since Hydra rewrites it for the
    resumed command. Both only in the launching process: under DDP the other ranks run the expanded command line
    again, into the folder rank 0 holds by then. The folder may be given quoted or not; it is passed on unquoted
    (see `command_line`).
    """
    given = [a for a in args if a.startswith("resume=")]
    if not given or given[-1] in ("resume=null", "resume="):
        return args
    run_dir = Path(unquoted(given[-1].split("=", 1)[1])).expanduser().resolve()
    check_run_folder(run_dir)
    saved = run_dir / ".hydra" / "overrides.yaml"
    first = [o for o in yaml.safe_load(saved.read_text()) or [] if not o.lstrip("+~").startswith(OWN_KEYS + SWEEP_KEYS)]
    check_override_targets(first, saved)
    if launching_process():  # the processes of other ranks run this command line again, into the folder it holds
        check_folder_free(run_dir)
        archive_run_config(run_dir)
    rest = [a for a in args if not a.startswith("resume=")]
    return [*first, *rest, f"resume={run_dir}", f"hydra.run.dir={run_dir}"]


def check_run_folder(path: Path) -> None:
    """CheckpointError unless `path` is a training run's folder (with `.hydra/overrides.yaml`), saying what it is
    instead: missing, a checkpoint file or a folder inside a run (naming the run to resume), a folder of runs."""
    if (path / ".hydra" / "overrides.yaml").is_file():
        return
    if not path.exists():
        raise CheckpointError(f"resume={path}: the folder does not exist: pass a training run's folder")
    run = run_folder_of(path)
    if path.is_dir() and run is not None:
        raise CheckpointError(f"resume={path} is a folder inside the training run {run}: resume={run} continues it")
    if not path.is_dir():
        message = f"resume={path} is a file: resume= takes a training run's folder"
        if run is not None:
            message += f"; resume={run} continues the run it belongs to from its furthest checkpoint"
        if path.suffix == ".ckpt":
            message += f"; a checkpoint file goes to ckpt_path={path}, which continues from it in a new run folder"
        raise CheckpointError(message)
    message = f"resume={path}: not a training run's folder (no .hydra/overrides.yaml in it)"
    runs = sorted(p.parent.parent.name for p in path.glob("*/.hydra/overrides.yaml"))  # a multirun's, or runs/
    if runs:
        message += f"; it holds the runs {', '.join(runs[:4])}{', …' if len(runs) > 4 else ''}: resume one of them"
    raise CheckpointError(message)


def unquoted(value: str) -> str:
    """A command-line value as Hydra reads it when it is quoted (`'a b'` → `a b`), else as typed."""
    if len(value) < 2 or value[0] not in "'\"" or value[-1] != value[0]:
        return value
    return str(OverridesParser.create().parse_override(f"key={value}").value())


# The run folder's files that describe the command that ran in it, rewritten by each command that runs there.
RUN_RECORD = (".hydra/*.yaml", "config_tree.log", "tags.log")


def archive_run_config(run_dir: Path) -> Path:
    """Copy the run's record of its command (`RUN_RECORD`: `.hydra/*.yaml`, the config tree, the tags) to
    `<run_dir>/.hydra/history/<n>/` (n = 1, 2, … per resume) and return that folder: the config that trained each
    part of a resumed run stays on record beside the one Hydra writes."""
    history = run_dir / ".hydra" / "history"
    done = [int(p.name) for p in history.glob("*") if p.name.isdigit()] if history.is_dir() else []
    folder = history / str(max(done, default=0) + 1)
    folder.mkdir(parents=True)
    for pattern in RUN_RECORD:
        for path in sorted(run_dir.glob(pattern)):
            shutil.copy2(path, folder / path.name)
    return folder


def restore_run_config(run_dir: Path) -> None:
    """Undo the newest `archive_run_config` of a resume that stopped before it saved a checkpoint (refused, or
    failed before its first one): the run's record goes back to the command whose checkpoints the folder holds, and
    the next resume archives that one, not the command that did nothing."""
    history = run_dir / ".hydra" / "history"
    numbered = [p for p in history.glob("*") if p.name.isdigit() and p.is_dir()] if history.is_dir() else []
    if not numbered:
        return
    newest = max(numbered, key=lambda p: int(p.name))
    archived_at = newest.stat().st_mtime_ns
    if any(p.stat().st_mtime_ns > archived_at for p in (run_dir / "checkpoints").glob("*.ckpt")):
        return  # the resumed command trained and saved: the record is now its own
    for path in newest.iterdir():
        target = run_dir / ".hydra" / path.name if path.suffix == ".yaml" else run_dir / path.name
        shutil.copy2(path, target)
    shutil.rmtree(newest)
    if not any(history.iterdir()):
        history.rmdir()
    log.info("The run's config in %s is the one of its checkpoints again: this command trained nothing", run_dir)


def slurm_restarts() -> int:
    """How many times SLURM has requeued this job (0 outside SLURM and in a job's first start)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


@dataclass(frozen=True)
class Restart:
    """A command its launcher started again: who did, in words, and the SLURM job (`slurm_job`) whose checkpoints
    it continues from (None for torchrun's, whose run folder `WritableRunFolder` checked to be its own)."""

    by: str
    slurm_job: str | None = None


def restarted_by() -> Restart | None:
    """The launcher's restart of this command; None in a first start."""
    job = slurm_job()
    if slurm_restarts() > 0 and job is not None:
        return Restart(f"SLURM job {job.split(':', 1)[1]} was requeued (restart {slurm_restarts()})", job)
    if torchrun_restarts() > 0:
        limit = os.environ.get("TORCHELASTIC_MAX_RESTARTS", "?")
        return Restart(f"torchrun started the run's processes again (restart {torchrun_restarts()} of {limit})")
    return None


def resume_restarted_run(cfg: DictConfig) -> None:
    """A command its launcher started again continues from the furthest checkpoint it saved in its run folder, as
    `resume=<run folder>` would: a SLURM job requeued (SLURM_RESTART_COUNT > 0: preempted, or stopped by SIGUSR1
    before its time limit), or the processes torchrun starts again after one of them failed (`--max-restarts`).
    `cfg.resume` is set to the folder, and `ckpt_path` and `init_from`, where the run first started from, give way.
    With `resume=` in its command, the command already says where to continue.

    Only the run's own checkpoints count. A SLURM job's each record the job that saved them (`SLURM_JOB_KEY`):
    CheckpointError when the checkpoint it would continue from was saved by another run, which starting over would
    overwrite. torchrun's folder was checked to be its own before (`WritableRunFolder`). A run that saved nothing
    yet starts again as it first did.
    """
    restart = restarted_by()
    if restart is None or cfg.get("resume"):
        return
    who, job = restart.by, restart.slurm_job
    run_dir = Path(cfg.paths.output_dir)
    try:
        furthest = furthest_valid_checkpoint(run_dir / "checkpoints")
    except CheckpointError:
        hint = (
            " (A requeued job finds its checkpoints only in the same folder: hydra.run.dir=…/$SLURM_JOB_ID.)"
            if job
            else ""
        )
        log.warning("%s before it saved a checkpoint in %s: it starts again as it first did.%s", who, run_dir, hint)
        return
    if job is not None:
        saved_by = load_checkpoint(furthest).get(SLURM_JOB_KEY)
        if saved_by != job:
            by = f"SLURM job {saved_by.split(':', 1)[1]}" if saved_by else "a run outside SLURM"
            raise CheckpointError(
                f"SLURM job {job.split(':', 1)[1]} was requeued, but the checkpoint it would continue from, "
                f"{furthest}, was saved by {by}: starting over would overwrite that run. Give each job a folder of "
                "its own (hydra.run.dir=…/$SLURM_JOB_ID), or continue that run with resume=<its folder>"
            )
    log.info("%s: resuming %s", who, run_dir)
    with open_dict(cfg):
        cfg.resume = str(run_dir)
        cfg.ckpt_path = None
        cfg.init_from = None


def checkpoint_to_resume(cfg: DictConfig) -> Path | None:
    """The checkpoint `cfg` resumes from, checked to load: `ckpt_path` as given, or with `resume` the furthest
    valid checkpoint of that run (`furthest_valid_checkpoint`: the largest step among those that load); in a
    requeued SLURM job or a torchrun restart, its own furthest checkpoint (`resume_restarted_run`). Sets
    `cfg.ckpt_path` to it."""
    resume_restarted_run(cfg)
    if cfg.get("resume") and cfg.get("ckpt_path"):
        raise ConfigError(
            f"resume={cfg.resume} continues that run from its furthest checkpoint, ckpt_path={cfg.ckpt_path} from "
            "another one: give one of them"
        )
    if cfg.get("resume"):
        path = furthest_valid_checkpoint(Path(cfg.resume) / "checkpoints")
        log.info("Resuming %s from %s", cfg.resume, path)
    elif cfg.get("ckpt_path"):
        path = Path(str(cfg.ckpt_path))
        load_checkpoint(path)
    else:
        return None
    with open_dict(cfg):
        cfg.ckpt_path = str(path)
    return path


def restarted_with_own_checkpoint(checkpoint: dict) -> bool:
    """True in a command started again by its launcher (`resume_restarted_run`), resuming a checkpoint that an
    earlier start of the same command saved: the same SLURM job, or the same torchrun command."""
    restart, launch = restarted_by(), torchrun_launch()
    if restart is None:
        return False
    if restart.slurm_job is not None:
        return checkpoint.get(SLURM_JOB_KEY) == restart.slurm_job
    return launch is not None and checkpoint.get(TORCHRUN_LAUNCH_KEY) == launch


def check_not_finished(checkpoint: dict, path: Path, max_epochs: int | None, max_steps: int | None) -> bool:
    """ConfigError when the run of `checkpoint` has already trained for `max_epochs` (or `max_steps`): Lightning
    would train nothing and the run would end without its metrics.

    Except in a command started again after its training had ended (a SLURM job preempted in its test, say, or a
    torchrun process that failed there; `restarted_with_own_checkpoint`): it goes on with
    what is left, Lightning restoring the finished state (the best checkpoint among it) and training nothing, and
    the test of the best checkpoint runs as it would have. Returns True then: the run has nothing left to train."""
    epochs_done = int(
        checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {}).get("processed", 0)
    )
    steps_done = int(checkpoint.get("global_step", 0))
    done = (max_epochs not in (None, -1) and epochs_done >= max_epochs) or (
        max_steps not in (None, -1) and steps_done >= max_steps
    )
    restart = restarted_by()
    if done and restart is not None and restarted_with_own_checkpoint(checkpoint):
        log.info(
            "%s after its training had ended (%d epochs, %d steps): nothing is left to train, the test follows",
            restart.by,
            epochs_done,
            steps_done,
        )
        return True
    if done:
        raise ConfigError(
            f"{path} is from a run that has already trained {epochs_done} epochs ({steps_done} steps), as far as "
            f"trainer.max_epochs={max_epochs} (trainer.max_steps={max_steps}) go: train it for longer with a larger "
            f"trainer.max_epochs, or evaluate it with `python src/eval.py ckpt_path={path}`"
        )
    return False
