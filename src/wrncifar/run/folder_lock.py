"""One live run per run folder: a run holds an advisory lock on `<run_dir>/.run.lock` while it works there, and
`resume=` of a folder whose lock is held is refused before anything in it is written.

The lock is `flock` on an open file: the operating system releases it when the process ends, however it ends, so
a crashed or killed run leaves no stale lock behind (a requeued job can take its folder back at once).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wrncifar.callbacks.torchrun import torchrun_launch

LOCK_FILE = ".run.lock"

log = logging.getLogger(__name__)


class FolderInUseError(RuntimeError):
    """Another live process is running in this run folder."""


@contextmanager
def hold_run_folder(run_dir: str | Path) -> Iterator[None]:
    """Hold the lock of `run_dir` for the duration of the block; FolderInUseError if another process holds it."""
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise FolderInUseError(_in_use_message(Path(run_dir), fd)) from err
        except OSError as err:  # a filesystem without locks (some network mounts): run unguarded, and say so
            log.warning("Cannot lock %s (%s): another process could use the same folder unnoticed", path, err)
        os.ftruncate(fd, 0)
        launch = torchrun_launch()
        os.write(fd, f"{os.uname().nodename} {os.getpid()}\n{f'launch {launch}' if launch else ''}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


# Set to a process's rank by the launchers of distributed runs: Lightning's own (for the processes it starts by
# running the command line again), torchrun, srun, and on a node other than the first.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK")


def launching_process() -> bool:
    """Whether this process is the one that prepares a run's folder: the command as the user gave it, or rank 0
    of a distributed launch; not a process a launcher started for another rank or node, which runs the same
    command line into the folder rank 0 holds."""
    return all(os.environ.get(name, "0").strip() in ("0", "") for name in RANK_VARIABLES)


def held_by_this_launch(run_dir: Path) -> bool:
    """Whether `run_dir`'s lock was last held by an earlier start of this torchrun command (`torchrun_launch`):
    the folder is this command's own, and its restarted processes continue in it."""
    launch = torchrun_launch()
    try:
        lines = (run_dir / LOCK_FILE).read_text(errors="replace").splitlines()
    except OSError:
        return False
    return launch is not None and f"launch {launch}" in lines[1:]


def check_folder_free(run_dir: Path) -> None:
    """FolderInUseError when a live process holds `run_dir`'s lock (`resume=` of a run that is still running)."""
    path = run_dir / LOCK_FILE
    if not path.is_file():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise FolderInUseError(_in_use_message(run_dir, fd)) from err
        except OSError:  # no locks on this filesystem: nothing to tell
            pass
    finally:
        os.close(fd)


def _in_use_message(run_dir: Path, fd: int) -> str:
    holder = os.pread(fd, 200, 0).decode(errors="replace").split("\n")[0].strip() or "unknown"
    host, _, pid = holder.partition(" ")
    return (
        f"{run_dir} is in use by a run that is still running (process {pid or '?'} on {host}): wait for it to end "
        "(or stop it) before resuming it, or give this run its own folder (leave out hydra.run.dir)"
    )
