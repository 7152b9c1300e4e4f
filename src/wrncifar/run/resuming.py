"""`resume=<run_dir>`: rerun a training run's own command in its own folder, from its newest valid checkpoint."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, open_dict

from wrncifar.run.checkpoints import CheckpointError, load_checkpoint, newest_valid_checkpoint
from wrncifar.run.config_validation import ConfigError
from wrncifar.run.folder_lock import check_folder_free
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

    Raises CheckpointError when `<run_dir>` is not a training run's folder, ConfigError when its saved overrides
    name code the project's configs do not use, FolderInUseError while a run is still running in it; only then is
    the run's saved config archived (`archive_run_config`), since Hydra rewrites it for the resumed command. The
    folder may be given quoted or not; it is passed on unquoted (see `command_line`).
    """
    given = [a for a in args if a.startswith("resume=")]
    if not given or given[-1] in ("resume=null", "resume="):
        return args
    run_dir = Path(unquoted(given[-1].split("=", 1)[1])).expanduser().resolve()
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise CheckpointError(f"resume={run_dir}: not a training run's folder (no .hydra/overrides.yaml in it)")
    first = [o for o in yaml.safe_load(saved.read_text()) or [] if not o.lstrip("+~").startswith(OWN_KEYS + SWEEP_KEYS)]
    check_override_targets(first, saved)
    check_folder_free(run_dir)
    archive_run_config(run_dir)
    rest = [a for a in args if not a.startswith("resume=")]
    return [*first, *rest, f"resume={run_dir}", f"hydra.run.dir={run_dir}"]


def unquoted(value: str) -> str:
    """A command-line value as Hydra reads it when it is quoted (`'a b'` → `a b`), else as typed."""
    if len(value) < 2 or value[0] not in "'\"" or value[-1] != value[0]:
        return value
    return str(OverridesParser.create().parse_override(f"key={value}").value())


def archive_run_config(run_dir: Path) -> Path:
    """Copy `<run_dir>/.hydra/*.yaml` to `<run_dir>/.hydra/history/<n>/` (n = 1, 2, … per resume) and return that
    folder: the config that trained each part of a resumed run stays on record beside the one Hydra writes."""
    history = run_dir / ".hydra" / "history"
    done = [int(p.name) for p in history.glob("*") if p.name.isdigit()] if history.is_dir() else []
    folder = history / str(max(done, default=0) + 1)
    folder.mkdir(parents=True)
    for path in sorted((run_dir / ".hydra").glob("*.yaml")):
        shutil.copy2(path, folder / path.name)
    return folder


def checkpoint_to_resume(cfg: DictConfig) -> Path | None:
    """The checkpoint `cfg` resumes from, checked to load: `ckpt_path` as given, or with `resume` the newest
    valid checkpoint of that run (last.ckpt, else the newest that loads). Sets `cfg.ckpt_path` to it."""
    if cfg.get("resume") and cfg.get("ckpt_path"):
        raise ConfigError(
            f"resume={cfg.resume} continues that run from its newest checkpoint, ckpt_path={cfg.ckpt_path} from "
            "another one: give one of them"
        )
    if cfg.get("resume"):
        path = newest_valid_checkpoint(Path(cfg.resume) / "checkpoints")
        log.info("Resuming %s from %s", cfg.resume, path)
    elif cfg.get("ckpt_path"):
        path = Path(str(cfg.ckpt_path))
        load_checkpoint(path)
    else:
        return None
    with open_dict(cfg):
        cfg.ckpt_path = str(path)
    return path


def check_not_finished(checkpoint: dict, path: Path, max_epochs: int | None, max_steps: int | None) -> None:
    """ConfigError when the run of `checkpoint` has already trained for `max_epochs` (or `max_steps`): Lightning
    would train nothing and the run would end without its metrics."""
    epochs_done = int(
        checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {}).get("processed", 0)
    )
    steps_done = int(checkpoint.get("global_step", 0))
    done = (max_epochs not in (None, -1) and epochs_done >= max_epochs) or (
        max_steps not in (None, -1) and steps_done >= max_steps
    )
    if done:
        raise ConfigError(
            f"{path} is from a run that has already trained {epochs_done} epochs ({steps_done} steps), as far as "
            f"trainer.max_epochs={max_epochs} (trainer.max_steps={max_steps}) go: train it for longer with a larger "
            f"trainer.max_epochs, or evaluate it with `python src/eval.py ckpt_path={path}`"
        )
