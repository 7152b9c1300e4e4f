"""The torchrun command that started this process, as its environment says: how often it has started the
processes again (`--max-restarts`) and a name that is the same in each restart. No torch or Lightning here: the run
folder's checks use it before they are imported."""

from __future__ import annotations

import os


def torchrun_restarts() -> int:
    """How many times torchrun has started this command's processes again after one failed (`--max-restarts`); 0
    in its first start and outside torchrun."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)


def torchrun_launch() -> str | None:
    """The torchrun command this process was started by, the same in each restart of its processes: its run id
    (`--rdzv-id`; a new one per command with `--standalone`) or, without one (`none`), the host and process of the
    torchrun agent that starts this node's processes; None outside torchrun."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id is None:
        return None
    return run_id if run_id != "none" else f"{os.uname().nodename}:{os.getppid()}"
