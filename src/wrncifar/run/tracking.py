"""Experiment tracking: the W&B logger (offline without an account, never a login prompt, best and final metrics
in the run summary); what every run records about itself (resolved config, git state, command-line overrides,
parameter counts); and the W&B settings a run derives from its config (the same W&B run on resume, one group
per sweep).
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig, OmegaConf, open_dict

from wrncifar.run.config_validation import ConfigError
from wrncifar.sweeps.summary import in_multirun

log = logging.getLogger(__name__)

API_KEY_ENV = "WANDB_API_KEY"
REDACTED = "<redacted>"


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger that works the same with or without a W&B account.

    Args:
        offline: None (default): offline when W&B finds no credentials (WANDB_API_KEY, ~/.netrc, `wandb login`),
            with a one-line note on how to upload the run later; online otherwise. True: always offline.
            False: always online; without credentials the run stops with a message instead of prompting.
            The environment variable WANDB_MODE (offline, online, disabled), when set, is W&B's own choice and
            wins over None.
        summary: metric name → what the run summary shows for it (`max`, `min`, `last`, `mean`, `best`);
            `{"val/acc": "max"}` shows the best validation accuracy rather than the last one.
        **kwargs: the arguments of Lightning's WandbLogger and of `wandb.init` (project, entity, group, tags, …).
    """

    def __init__(self, offline: bool | None = None, summary: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        # Lightning's own `offline=True` sets WANDB_MODE for the whole process and refuses `log_model`; W&B's
        # `mode` argument does neither (offline artifacts are uploaded by `wandb sync` with the run).
        super().__init__(offline=False, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            del self._wandb_init["anonymous"]  # W&B warns about the argument even when it is None
        self._offline_choice = offline
        self._summary = dict(summary or {})

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        starting = self._experiment is None
        if starting and not self._wandb_init.get("mode"):
            mode = wandb_mode(self._offline_choice, run_dir=self._save_dir)
            if mode:
                self._wandb_init["mode"] = mode
        try:
            run = super().experiment
        except _wandb_comm_error() as err:  # a key but no network: W&B gives up after its init_timeout
            raise ConfigError(
                f"W&B could not reach its server ({str(err).splitlines()[0]}): without network, set "
                "WANDB_MODE=offline (or logger.wandb.offline=true) and upload the run later with `wandb sync`"
            ) from err
        if starting and getattr(run, "define_metric", None):
            for name, summary in self._summary.items():
                run.define_metric(name, summary=summary, step_metric="trainer/global_step")
        return run


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


def without_secrets(value: Any, secret: str | None = None) -> Any:
    """`value` (nested dicts and lists) with every string that contains `secret` (default: the W&B API key of
    the environment) replaced by "<redacted>": a config that interpolates the key never carries it to a logger."""
    secret = secret if secret is not None else os.environ.get(API_KEY_ENV)
    if not secret:
        return value
    if isinstance(value, Mapping):
        return {k: without_secrets(v, secret) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_secrets(v, secret) for v in value]
    if isinstance(value, str) and secret in value:
        return REDACTED
    return value


def git_state(repo_dir: str | Path) -> dict[str, Any]:
    """The commit checked out in `repo_dir` and whether the work tree differs from it (untracked files count);
    commit None outside a git checkout or without git."""
    try:
        commit = _git(repo_dir, "rev-parse", "HEAD")
        dirty = bool(_git(repo_dir, "status", "--porcelain"))
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def _git(repo_dir: str | Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo_dir, capture_output=True, text=True, check=True, timeout=30)
    return done.stdout.strip()


def command_line_overrides() -> list[str]:
    """This run's command-line overrides (Hydra's `overrides.task`); empty outside a Hydra run."""
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def sweep_group_and_name() -> tuple[str, str] | None:
    """In a Hydra multirun: the sweep's id (its folder's name), shared by its jobs, and this job's name, the
    overrides the sweep varies (`model.optimizer.lr=0.05`). None in a single run."""
    if not in_multirun():
        return None
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    swept = _swept_keys(hydra_cfg)
    varied = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in swept]
    name = ",".join(sorted(varied or overrides)) or f"job{hydra_cfg.job.num}"
    return Path(hydra_cfg.sweep.dir).name, name


def _swept_keys(hydra_cfg: Any) -> set[str]:
    """Keys a sweep varies: the sweeper's `params` (Optuna's search space, the basic sweeper's params) and the
    command line's sweeps (`a=1,2`, `b=range(3)`), which the basic sweeper saves in `<sweep dir>/multirun.yaml`."""
    keys = {str(k) for k in (hydra_cfg.sweeper.get("params") or {})}
    saved = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    if saved.is_file():
        task = OmegaConf.load(saved).hydra.overrides.task
        parsed = OverridesParser.create().parse_overrides([str(o) for o in task])
        keys |= {o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()}
    return keys


def log_run_config(trainer: Trainer, cfg: DictConfig, model: LightningModule) -> None:
    """Send the resolved config, the command-line overrides, the git commit (and whether the work tree differs
    from it) and the parameter counts to every logger. A W&B API key the config interpolates is redacted."""
    if not trainer.loggers:
        return
    hparams: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    hparams["overrides"] = command_line_overrides()
    hparams["git"] = git_state(Path(__file__).parent)
    hparams["model/params/total"] = sum(p.numel() for p in model.parameters())
    hparams["model/params/trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    hparams = without_secrets(hparams)
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)


def keep_wandb_run(cfg: DictConfig) -> None:
    """A resumed run logs to the W&B run it started, unless `logger.wandb.id` names another."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None or wandb_cfg.get("id"):
        return
    run_id = wandb_run_id(Path(cfg.paths.output_dir))
    if run_id:
        with open_dict(wandb_cfg):
            wandb_cfg.id = run_id
            wandb_cfg.resume = "allow"


def group_sweep_jobs(cfg: DictConfig) -> None:
    """In a Hydra multirun, the W&B runs of one sweep share a group (the sweep's id) and each is named by the
    overrides the sweep varies, unless `logger.wandb.group` / `logger.wandb.name` are set."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    names = sweep_group_and_name() if wandb_cfg is not None else None
    if names is None:
        return
    with open_dict(wandb_cfg):
        wandb_cfg.group = wandb_cfg.get("group") or names[0]
        wandb_cfg.name = wandb_cfg.get("name") or names[1]


def wandb_run_id(run_dir: Path) -> str | None:
    """The id of the W&B run that logged from `run_dir` (wandb's `latest-run` folder is `run-<time>-<id>`)."""
    latest = run_dir / "wandb" / "latest-run"
    if not latest.exists():
        return None
    return latest.resolve().name.rsplit("-", 1)[-1]
