"""The environment the entry points add before anything else is imported: the project root and its `.env` file.

What lightning-hydra-template's `rootutils.setup_root(__file__, dotenv=True)` does: `PROJECT_ROOT` (read by
`configs/paths/default.yaml`) names the checkout, and `<root>/.env`, git-ignored, holds this machine's variables
(`WANDB_API_KEY`, `WRNCIFAR_DATA_DIR`, `PYTORCH_ENABLE_MPS_FALLBACK`). A variable already set in the environment
always wins over the file. Applied before torch is imported, because torch reads some variables when it loads.
"""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import dotenv_values


def project_environment(entry_file: str | Path) -> dict[str, str]:
    """The variables to add to `os.environ` for the entry point `entry_file` (`<root>/src/train.py`): `PROJECT_ROOT`,
    the checkout holding it (unless set already, e.g. by the DDP processes' parent), and those of `<root>/.env`
    (python-dotenv's syntax, `${VAR}` expanded); none that the environment already has."""
    root = os.environ.get("PROJECT_ROOT") or str(Path(entry_file).resolve().parents[1])
    found = {"PROJECT_ROOT": root, **dotenv_values(Path(root) / ".env")}
    return {key: value for key, value in found.items() if value is not None and key not in os.environ}
