"""The command line as Hydra must see it: the spellings users of Lightning-Hydra templates type, rewritten into
Hydra's own, and `resume=<run_dir>` expanded into that run's overrides. One step, before `@hydra.main` parses
`sys.argv`.
"""

from __future__ import annotations

import sys

from wrncifar.run.checkpoints import CheckpointError
from wrncifar.run.folder_lock import FolderInUseError
from wrncifar.run.resuming import resume_overrides

# Groups with a default option that a user may switch off. Hydra rejects `group=null` once the group has a
# default (`~group` is its spelling), but `logger=null` is what lightning-hydra-template users type.
SWITCHABLE_GROUPS = ("logger", "callbacks")


def null_group_overrides(args: list[str]) -> list[str]:
    """Rewrite `logger=null` / `callbacks=null` into Hydra's deletion syntax `~logger` / `~callbacks`."""
    nulls = {f"{group}=null" for group in SWITCHABLE_GROUPS}
    return [f"~{arg.split('=')[0]}" if arg in nulls else arg for arg in args]


def hydra_arguments(args: list[str], resumable: bool) -> list[str]:
    """`args` with `null_group_overrides` applied and, when `resumable`, `resume=<run_dir>` expanded (see
    `resume_overrides`). A folder that cannot be resumed (not a run, or a run still running) prints its message
    and exits 1: Hydra has not set up logging yet, so there is no log file to write it to."""
    args = null_group_overrides(args)
    if not resumable:
        return args
    try:
        return resume_overrides(args)
    except (CheckpointError, FolderInUseError) as err:
        print(f"Error: {err}", file=sys.stderr)
        raise SystemExit(1) from err
