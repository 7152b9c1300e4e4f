"""A quiet console: what libraries print that a user of this project cannot act on is silenced here, each
message with the reason it is safe to hide. Everything else (and every warning of the project) still shows."""

from __future__ import annotations

import logging
import re
import warnings

# Python warnings: (message pattern, why it is hidden).
QUIET_WARNINGS = (
    (
        r"The `srun` command is available on your system but is not used",
        "Lightning says this on every machine with SLURM's client; cluster runs are launched with srun (README)",
    ),
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        "raised inside Lightning's own pytree helper on recent torch; nothing a run can change",
    ),
    (
        r"The number of training batches \(\d+\) is smaller than the logging interval",
        "short runs: the epoch metrics, lr and images/s are logged every epoch whatever log_every_n_steps is",
    ),
)
# Only in evaluation, where the training callbacks' states are not needed to test the weights.
QUIET_EVALUATION_WARNINGS = (
    (
        r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint",
        "evaluation restores the network's weights; the training callbacks' saved states play no part in a test",
    ),
)
# Lightning's info lines: (message pattern, why it is hidden).
QUIET_INFO = (
    (r"💡 Tip: ", "advertisements for Lightning's hosted services (litlogger, litmodels)"),
    (
        r"Trainer already configured with model summary callbacks",
        "the project's ModelSummary (callbacks.rich_model_summary) replaces Lightning's default on purpose",
    ),
)
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropMessages(logging.Filter):
    def __init__(self, patterns: tuple[tuple[str, str], ...]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p, _ in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def quiet_console(evaluation: bool = False) -> None:
    """Hide `QUIET_WARNINGS` and `QUIET_INFO` (and, when `evaluation`, `QUIET_EVALUATION_WARNINGS`), and print
    each of Lightning's messages once (`one_console_copy`)."""
    one_console_copy()
    for pattern, _reason in QUIET_WARNINGS + (QUIET_EVALUATION_WARNINGS if evaluation else ()):
        warnings.filterwarnings("ignore", message=pattern)
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(QUIET_INFO))


def one_console_copy() -> None:
    """Where the root logger writes to a console (Hydra's handlers: the console and `<run>/train.log`), Lightning's
    messages go through it alone. Importing `lightning` puts a handler of its own on the `lightning` logger whose
    records still reach the root logger, so every message of Lightning's showed twice on a terminal and in a batch
    job's output; and `lightning.pytorch` or `lightning.fabric`, imported before Hydra set up logging, keep their
    records from the root logger, so from train.log. Without a console on the root logger (a script of one's own,
    the benchmark) Lightning's handlers stay."""
    root_console = any(_is_console(h) for h in logging.getLogger().handlers)
    if not root_console:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if _is_console(h)]:
            logger.removeHandler(handler)
        logger.propagate = True


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
