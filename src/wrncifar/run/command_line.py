"""The command line as Hydra must see it: `resume=<run_dir>` expanded into that run's overrides, paths quoted so
that any legal path works, and the spellings users of Lightning-Hydra templates type rewritten into Hydra's own.
One step, before `@hydra.main` parses `sys.argv`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from wrncifar.run.training_run import run_config_keys

# Groups with a default option that a user may switch off. Hydra rejects `group=null` once the group has a
# default (`~group` is its spelling), but `logger=null` is what lightning-hydra-template users type.
SWITCHABLE_GROUPS = ("logger", "callbacks")


def null_group_overrides(args: list[str]) -> list[str]:
    """Rewrite `logger=null` / `callbacks=null` into Hydra's deletion syntax `~logger` / `~callbacks`."""
    nulls = {f"{group}=null" for group in SWITCHABLE_GROUPS}
    return [f"~{arg.split('=')[0]}" if arg in nulls else arg for arg in args]


# Keys whose values are paths (with `paths.*`). Hydra's override grammar gives spaces around words, commas (a
# sweep), brackets, braces, parentheses, `=`, quotes and non-ASCII letters meanings of their own, or refuses them.
PATH_KEYS = ("ckpt_path", "init_from", "resume", "data.data_dir", "eval.report_dir", "hydra.run.dir", "hydra.sweep.dir")


def quote_path(arg: str, path_keys: tuple[str, ...] = ()) -> str:
    """`key=<path>` with the path in single quotes when Hydra would not read it as typed (`ckpt_path=/a b,c/x.ckpt`
    → `ckpt_path='/a b,c/x.ckpt'`). Values already quoted, `null` and interpolations (`${…}`) are left as they are;
    to sweep over paths, use `choice('a','b')`. `path_keys`: an entry point's own path keys besides `PATH_KEYS`."""
    key, sep, value = arg.partition("=")
    name = key.lstrip("+~")
    if not sep or not (name in PATH_KEYS or name in path_keys or name.startswith("paths.")):
        return arg
    if not value or value[0] in "'\"" or value == "null" or "${" in value or value.startswith(("choice(", "glob(")):
        return arg
    try:
        parsed = OverridesParser.create().parse_override(f"{name}={value}")
        if parsed.value() == value:
            return arg
    except HydraException:  # it cannot be read as typed
        pass
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return f"{key}='{escaped}'"


def hydra_arguments(
    args: list[str], resumable: bool, path_keys: tuple[str, ...] = (), checkpoint_run: bool = False
) -> list[str]:
    """`args` with, when `resumable`, `resume=<run_dir>` expanded (see `resume_overrides`), then paths quoted
    (`quote_path`, `path_keys` the entry point's own) and `null_group_overrides` applied; with `checkpoint_run` (a
    command that takes the model and data configs of `ckpt_path`'s training run), overrides of keys only that
    run's configs have made to reach them (`run_config_keys`). A folder that cannot be resumed (not a run, or a run
    still running) prints its message and exits 1: Hydra has not set up logging yet, so there is no log file for
    it."""
    if resumable and any(arg.startswith("resume=") for arg in args):
        # Imported only here: they load torch and Lightning, and a command without resume= should reach Hydra's
        # own checks (a mistyped key, a missing option) in a second, not after those imports.
        from wrncifar.run.checkpoints import CheckpointError
        from wrncifar.run.config_validation import ConfigError
        from wrncifar.run.folder_lock import FolderInUseError
        from wrncifar.run.resuming import resume_overrides

        try:
            args = resume_overrides(args)
        except (CheckpointError, ConfigError, FolderInUseError) as err:
            print(f"Error: {err}", file=sys.stderr)
            raise SystemExit(1) from err
    args = null_group_overrides([quote_path(arg, path_keys) for arg in args])
    return run_config_keys(args) if checkpoint_run else args


def absolute_paths(cfg: DictConfig) -> None:
    """Make the path options of `cfg` absolute, relative to the folder the command was run from: with
    `hydra.job.chdir=true` the job runs in its output folder, where a relative path would point elsewhere, and an
    error then names the absolute path it looked at. A leading `~` is the user's home, as in a shell (which expands
    it in `ckpt_path=~/…` but not in `data.data_dir=~/…`)."""
    if not HydraConfig.initialized():
        return
    launch_dir = Path(HydraConfig.get().runtime.cwd)
    keys = [k for k in PATH_KEYS if not k.startswith(("hydra.", "resume"))]
    keys += [f"paths.{k}" for k in (cfg.get("paths") or {})]
    for key in keys:
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        if isinstance(value, str) and value and value != str(launch_dir / Path(value).expanduser()):
            OmegaConf.update(cfg, key, str(launch_dir / Path(value).expanduser()), force_add=False)
