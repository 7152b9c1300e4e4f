"""The run folder's beginning and end when a run cannot go on: refused, before Hydra makes it, when it cannot be
written (a read-only file system, a folder without write permission), with one message instead of Hydra's
traceback; removed when the run stopped before training with nothing in it but its configs and log."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from wrncifar.callbacks.torchrun import torchrun_restarts
from wrncifar.run.folder_lock import held_by_this_launch, launching_process
from wrncifar.sweeps.sweep_setup import resolved_folder


class WritableRunFolder(Callback):
    """Hydra callback: the folder a run (`hydra.run.dir`) or sweep (`hydra.sweep.dir`) writes to must be
    creatable, and a new training run or sweep must not start in a folder that already holds one (its configs,
    checkpoints and metrics would be overwritten or mixed with the new run's); otherwise the command prints why
    and exits 1 before anything starts. `resume=`, a requeued SLURM job, the processes torchrun starts again in
    the folder of the run they continue (`--max-restarts`) and the other processes of a distributed run work in an
    existing run's folder on purpose."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_unless_writable(config, "hydra.run.dir")
        if _starts_training(config) and not config.get("resume") and not _restarted(config) and launching_process():
            _exit_if_holding_a_run(config, "hydra.run.dir", lambda folder: [folder])

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_unless_writable(config, "hydra.sweep.dir")
        if _starts_training(config):
            _exit_if_holding_a_run(config, "hydra.sweep.dir", lambda folder: sorted(folder.glob("*/")))


def _starts_training(config: DictConfig) -> bool:
    """Whether the command is `src/train.py`'s (its config has `train`), which writes checkpoints and metrics."""
    return "train" in config


def _restarted(config: DictConfig) -> bool:
    """Whether this command continues its own run: a requeued SLURM job, or torchrun starting its processes again
    in the run folder an earlier start of the same torchrun command held (not one that was refused there)."""
    if int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0:
        return True
    folder = resolved_folder(config, "hydra.run.dir")
    return torchrun_restarts() > 0 and folder is not None and held_by_this_launch(folder)


def _exit_if_holding_a_run(config: DictConfig, key: str, run_folders: Callable[[Path], list[Path]]) -> None:
    folder = resolved_folder(config, key)
    if folder is None or not folder.is_dir():
        return
    held = [f for f in run_folders(folder) if f.is_dir() and _run_outputs(f)]
    if not held:
        return
    what = (
        "a run" if key == "hydra.run.dir" else f"a sweep ({len(held)} job folder{'s' * (len(held) > 1)} with outputs)"
    )
    outputs = ", ".join(_run_outputs(held[0])[:3])
    continue_with = f"continue it with resume={folder}, " if key == "hydra.run.dir" else ""
    print(
        f"Error: {key}={folder} already holds {what} ({outputs}), which this command would overwrite: "
        f"{continue_with}give a new folder with {key}=…, or leave {key} out for a folder named by the time. "
        "Nothing was run.",
        file=sys.stderr,
    )
    raise SystemExit(1)


def _run_outputs(folder: Path) -> list[str]:
    """The files in `folder` a training run writes once it has started (beyond `BEFORE_TRAINING` and log files),
    relative to it: those a new run in the same folder would overwrite or mix with its own."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    return [f for f in files if f not in BEFORE_TRAINING and not (f.endswith(".log") and "/" not in f)]


def unwritable_reason(folder: Path) -> str | None:
    """Why `folder` could not be created or written to, or None when it can: the nearest existing folder on its
    path decides (a read-only file system, no write permission, or a file where a folder should be)."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if os.access(existing, os.W_OK | os.X_OK):
        return None
    flags = os.statvfs(existing).f_flag
    if flags & os.ST_RDONLY:
        return f"{existing} is on a read-only file system"
    return f"{existing} is not writable by this user"


def _exit_unless_writable(config: DictConfig, key: str) -> None:
    folder = resolved_folder(config, key)
    if folder is None:
        return
    reason = unwritable_reason(folder)
    if reason is not None:
        print(
            f"Error: {key}={folder} cannot be created: {reason}. Give a writable folder with {key}=… (or move "
            "all runs with paths.log_dir=…). Nothing was run.",
            file=sys.stderr,
        )
        raise SystemExit(1)


# What a run writes before its first training step: the folder of a run that failed before that holds these only.
BEFORE_TRAINING = {
    ".run.lock",
    ".hydra/config.yaml",
    ".hydra/hydra.yaml",
    ".hydra/overrides.yaml",
    "config_tree.log",
    "tags.log",
    "csv/hparams.yaml",
}


def remove_if_nothing_ran(folder: Path, log_name: str) -> bool:
    """Remove the run folder `folder` when it holds nothing but what a run writes before training
    (`BEFORE_TRAINING` and its log file `log_name`): a run stopped by a config error or missing data then leaves
    no folder for tools to mistake for a run. Anything else in it (a checkpoint, metrics, a resumed run's history,
    a file of the user's) keeps it. Returns whether it was removed."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}
    links = [p for p in folder.rglob("*") if p.is_symlink()]
    if links or not files <= BEFORE_TRAINING | {log_name}:
        return False
    shutil.rmtree(folder)
    return True
