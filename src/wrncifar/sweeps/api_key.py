"""The W&B API key of the environment, kept out of what the project writes: a run's configs, logs and loggers
(`wrncifar.run.tracking`), and each job's record of how it ended (`summary.JOB_RESULT`), whose error text may
quote a value that interpolates the key."""

from __future__ import annotations

import os

API_KEY_ENV = "WANDB_API_KEY"  # where W&B and this project read the API key from the environment
REDACTED = "<redacted>"


def api_key() -> str:
    """The W&B API key of the environment; "" without one."""
    return os.environ.get(API_KEY_ENV, "")


def redacted(text: str) -> str:
    """`text` with the API key of the environment replaced by REDACTED wherever it occurs."""
    key = api_key()
    return text.replace(key, REDACTED) if key else text
