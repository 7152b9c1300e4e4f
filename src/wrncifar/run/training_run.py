"""The training run behind a checkpoint, as the commands that use one (`src/eval.py`, `src/predict.py`,
`src/export.py`) read it: its folder, its saved config, and the command-line overrides of its `model` and `data`
configs. No torch or Lightning here: `command_line.hydra_arguments` uses it before Hydra starts."""

from __future__ import annotations

from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

# The config groups taken from the training run's saved config (`evaluation.adopt_training_run_config`), so that
# `eval.py ckpt_path=…` rebuilds the same network and data source without repeating the training overrides.
RUN_GROUPS = ("model", "data")
# How far above a path its run's `.hydra/` folder may be (<run>/checkpoints/x.ckpt, <run>/csv/version_0/…/x.ckpt).
RUN_DIR_DEPTH = 4
# The files of a run's `.hydra/` folder: Hydra's saved config (read to rebuild the run's model and data) and the
# run's command-line overrides (what `resume=` runs again).
SAVED_CONFIG = "config.yaml"
SAVED_OVERRIDES = "overrides.yaml"


def run_folder_of(path: Path, marker: str = SAVED_OVERRIDES) -> Path | None:
    """The training run's folder that `path` is or lies in: the nearest, at most RUN_DIR_DEPTH folders above it,
    with a `.hydra/<marker>`; None outside a run."""
    path = path.expanduser().resolve()
    for folder in [path, *path.parents][: RUN_DIR_DEPTH + 1]:
        if (folder / ".hydra" / marker).is_file():
            return folder
    return None


def training_run_config(ckpt_path: Path) -> DictConfig | None:
    """The config Hydra saved for the run that wrote `ckpt_path`."""
    run_dir = run_folder_of(ckpt_path, SAVED_CONFIG)
    return None if run_dir is None else OmegaConf.load(run_dir / ".hydra" / SAVED_CONFIG)  # type: ignore[return-value]


def run_config_keys(args: list[str]) -> list[str]:
    """`args` (the command line as Hydra reads it) with each `model.<key>=…` / `data.<key>=…` of a key that the
    training run's saved config has (the run that wrote `ckpt_path=`) written `++model.<key>=…`, which Hydra adds
    where the key is missing.

    Hydra composes this command's own default options (`data: cifar100`) before `adopt_training_run_config` puts the
    run's in their place, so a key that only the run's option has (`data.test_per_class` of `data=synthetic`) is not
    there yet, and Hydra would refuse a plain override of it. A key that neither has is left to Hydra's own error;
    so is a group chosen on the command line (`data=…`), which keeps this config's option.
    """
    parser = OverridesParser.create()
    parsed = [parse_override(parser, arg) for arg in args]
    ckpt = next((o.value() for o in parsed if o is not None and o.key_or_group == "ckpt_path"), None)
    try:
        run_cfg = training_run_config(Path(ckpt).expanduser()) if isinstance(ckpt, str) and ckpt else None
    except Exception:  # noqa: BLE001 - an unreadable saved config: the command reports it once Hydra has started
        run_cfg = None
    if run_cfg is None:
        return args
    run_keys = OmegaConf.to_container(run_cfg, resolve=False)  # read, not resolved: the file is data
    groups = set(RUN_GROUPS) - {o.key_or_group for o in parsed if o is not None}
    return [
        f"++{arg}"
        if o is not None
        and o.type == OverrideType.CHANGE
        and o.key_or_group.split(".")[0] in groups
        and has_key(run_keys, o.key_or_group)
        else arg
        for arg, o in zip(args, parsed, strict=True)
    ]


def parse_override(parser: OverridesParser, arg: str) -> Override | None:
    """`arg` as Hydra reads an override; None for a flag (`-m`) or anything Hydra will report itself."""
    try:
        return parser.parse_override(arg)
    except HydraException:
        return None


def has_key(config: object, dotted: str) -> bool:
    """Whether the nested dicts `config` have the key `dotted` (`data.test_per_class`)."""
    for part in dotted.split("."):
        if not isinstance(config, dict) or part not in config:
            return False
        config = config[part]
    return True
