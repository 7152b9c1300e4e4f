"""The project's loggers: Lightning's CSV and W&B loggers, made to keep a resumed run's history and to work the same
with or without a W&B account.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from wrncifar.analysis.output_files import write_file
from wrncifar.run.checkpoints import wait_for_checkpoint_writes
from wrncifar.run.config_validation import ConfigError
from wrncifar.run.tracking import WANDB_ID_FILE, without_secrets
from wrncifar.sweeps.api_key import redacted

log = logging.getLogger(__name__)


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger (same arguments) that continues the `metrics.csv` a run already has instead of deleting
    it: a resumed run (`resume=`), or a requeued job, keeps its whole history in one file.

    `rewind(step)` drops the rows logged at or after `step`, the work after the checkpoint a run resumes from,
    which the resumed run logs again (when it logs its first metrics).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rewind_to: int | None = None

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment

    def rewind(self, step: int) -> None:
        """Drop the rows logged at or after `step` once this run logs its first metrics: a resumed run that stops
        before training (a process that never joins, a bad setting) leaves the file as it was."""
        self._rewind_to = step

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self._rewind_to is not None:
            self._drop_rows_from(self._rewind_to)
            self._rewind_to = None
        super().log_metrics(metrics, step)

    def _drop_rows_from(self, step: int) -> None:
        writer = self.experiment
        path = Path(writer.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames or [], list(reader)
        kept = [row for row in rows if not row.get("step") or int(row["step"]) < step]
        if len(kept) == len(rows):
            return
        write_file(path, lambda tmp: _write_rows(tmp, header, kept))
        log.info(
            "%s: %d rows logged from step %d on are dropped; the resumed run logs them again",
            path,
            len(rows) - len(kept),
            step,
        )


def _write_rows(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=header)
        out.writeheader()
        out.writerows(rows)


class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer that appends to an existing `metrics.csv` (its header becomes the known columns)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger that works the same with or without a W&B account.

    Args:
        offline: None (default): offline when W&B finds no credentials (WANDB_API_KEY, ~/.netrc, `wandb login`),
            with a one-line note on how to upload the run later; online otherwise. True: always offline.
            False: always online; without credentials the run stops with a message instead of prompting.
            The environment variable WANDB_MODE (offline, online, disabled), when set, is W&B's own choice and
            wins over None.
        summary: metric name → what the run summary shows for it (`max`, `min`, `last`, `mean`, `first`, `none`);
            `{"val/acc": "max"}` shows the best validation accuracy rather than the last one.
        run_dir: the training run's folder: the W&B run's id is recorded there (`WANDB_ID_FILE`) when it starts,
            so that `resume=` logs to the same W&B run wherever `save_dir` puts W&B's own files.
        **kwargs: the arguments of Lightning's WandbLogger and of `wandb.init` (project, entity, group, tags, …).
    """

    def __init__(
        self,
        offline: bool | None = None,
        summary: Mapping[str, str] | None = None,
        run_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        # Lightning's own `offline=True` sets WANDB_MODE for the whole process and refuses `log_model`; W&B's
        # `mode` argument does neither (offline artifacts are uploaded by `wandb sync` with the run). A value that
        # interpolates the API key (notes, tags, a name) reaches W&B redacted.
        super().__init__(offline=False, **without_secrets(kwargs))
        if self._wandb_init.get("anonymous") is None:
            del self._wandb_init["anonymous"]  # W&B warns about the argument even when it is None
        self._offline_choice = offline
        self._summary = dict(summary or {})
        self._run_dir = Path(run_dir) if run_dir else None
        check_wandb_settings(self._wandb_init, self._summary)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        starting = self._experiment is None
        if starting and not self._wandb_init.get("mode"):
            mode = wandb_mode(self._offline_choice, run_dir=self._save_dir)
            if mode:
                self._wandb_init["mode"] = mode
        argv = sys.argv
        if starting:  # W&B records the command line as the run's "args" when it starts; later calls only read it
            sys.argv = [redacted(arg) for arg in argv]
        try:
            run = super().experiment
        except _wandb_comm_error() as err:  # a key but no network: W&B gives up after its init_timeout
            raise ConfigError(
                f"W&B could not reach its server ({str(err).splitlines()[0]}): without network, set "
                "WANDB_MODE=offline (or logger.wandb.offline=true) and upload the run later with `wandb sync`"
            ) from err
        finally:
            sys.argv = argv
        if starting and getattr(run, "define_metric", None):
            for name, summary in self._summary.items():  # named as logged: `<prefix>-val/acc` with a prefix
                logged = f"{self._prefix}{self.LOGGER_JOIN_CHAR}{name}" if self._prefix else name
                run.define_metric(logged, summary=summary, step_metric="trainer/global_step")
        if starting and self._run_dir is not None and getattr(run, "id", None):
            self._run_dir.mkdir(parents=True, exist_ok=True)
            write_file(self._run_dir / WANDB_ID_FILE, lambda tmp: tmp.write_text(f"{run.id}\n"))
        return run

    # With log_model, W&B reads the checkpoint files: after each save ("all", or true with save_top_k=-1, which
    # Lightning never scans again at the end) or at the end (true). Checkpoints are written in the background
    # (AtomicCheckpointIO), so first wait until they are on disk: a file still being written is skipped for good.
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self._log_model == "all" or (self._log_model is True and checkpoint_callback.save_top_k == -1):
            wait_for_checkpoint_writes()
        super().after_save_checkpoint(checkpoint_callback)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._log_model and status == "success":
            wait_for_checkpoint_writes()
        super().finalize(status)


# `wandb.init`'s arguments and the W&B settings that check them; and the summaries `define_metric` accepts.
INIT_SETTINGS = {
    "project": "project",
    "entity": "entity",
    "group": "run_group",
    "name": "run_name",
    "notes": "run_notes",
    "id": "run_id",
    "job_type": "run_job_type",
    "tags": "run_tags",
}
SUMMARIES = ("min", "max", "mean", "last", "first", "none")


def check_wandb_settings(init: Mapping[str, Any], summary: Mapping[str, str]) -> None:
    """ConfigError for what W&B would refuse only once its run starts, after the data and the network are built: a
    project, run id or tag it does not accept (its own checks, `wandb.Settings`) and an unknown summary."""
    import wandb

    for name, ops in summary.items():
        unknown = [op for op in str(ops).lower().split(",") if op not in SUMMARIES]
        if unknown:
            raise ConfigError(
                f"logger.wandb.summary: {name}={ops} is not a summary W&B knows: use one of {', '.join(SUMMARIES)}"
            )
    given = {setting: init[arg] for arg, setting in INIT_SETTINGS.items() if init.get(arg) is not None}
    if "run_tags" in given:
        given["run_tags"] = tuple(str(tag) for tag in given["run_tags"])
    try:
        wandb.Settings(**{k: v if isinstance(v, tuple) else str(v) for k, v in given.items()})
    except (wandb.Error, ValueError) as err:  # W&B's UsageError; pydantic's ValidationError is a ValueError
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = next((line for line in lines if line.startswith("Value error,")), lines[0] if lines else str(err))
        reason = reason.removeprefix("Value error,").split(" [type=")[0].strip()
        raise ConfigError(f"logger.wandb: W&B would refuse this run's settings: {reason}") from err


def wandb_mode(offline: bool | None, run_dir: str | None = None) -> str | None:
    """The `mode` for `wandb.init`: "offline", "online", or None to leave it to W&B (WANDB_MODE, its settings).

    Never prompts: without credentials, `offline=None` goes offline and `offline=False` raises ConfigError.
    """
    if offline:
        return "offline"
    if offline is None and os.environ.get("WANDB_MODE"):
        return None
    if has_wandb_credentials():
        return "online" if offline is False else None
    if offline is False:
        raise ConfigError(
            "logger.wandb.offline=false but W&B has no credentials: run `wandb login` (or set WANDB_API_KEY), "
            "or leave logger.wandb.offline unset to log offline and upload later with `wandb sync`"
        )
    where = Path(run_dir or ".") / "wandb" / "offline-run-*"
    log.warning("W&B: no API key or login found, so logging offline; upload later with `wandb sync %s`", where)
    return "offline"


def _wandb_comm_error() -> type[Exception]:
    from wandb.errors import CommError

    return CommError


def has_wandb_credentials() -> bool:
    """Whether W&B finds credentials (WANDB_API_KEY, an identity token, ~/.netrc, its settings), the way
    `wandb.init` looks for them, without prompting and without the network (`wandb.login` asks the server whom
    a key belongs to, which stalls on an offline node)."""
    from wandb.errors import AuthenticationError
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    host = wandb_setup.singleton().settings.base_url
    try:
        found = wbauth.authenticate_session(host=host, source="wandb.init()", prompt=False, update_session=False)
    except AuthenticationError as err:
        raise ConfigError(f"W&B credentials are malformed ({err}): fix them, or set WANDB_MODE=offline") from err
    return found is not None
