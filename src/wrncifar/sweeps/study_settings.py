"""What a stored Optuna study optimises, kept with it, so that a later command does not continue it with different
settings.

`hparams_search=wrn_cifar100_optuna` continues its stored study when run again: the sampler then models the new
trials on the old ones. Trials run with another dataset, model, epoch count or metric would make that model (and
the study's best trial) meaningless without any sign of it. So the study records, when it is created, the command
line's fixed overrides (those that are not a search range) and the config they composed; a command that overrides
a key to another value than the study's config had is refused, naming the differences, before any trial runs. The
values compared are the composed config's, not the overrides as typed: `seed=42` continues a study made without
it when 42 is the default. Overrides that change where results go or how they are labelled (tags, loggers, paths,
extras) may differ. A study whose every trial failed takes the new command's settings instead, with a line in the
log: samplers model new trials on none of its trials.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

USER_ATTR = "wrncifar_fixed_overrides"
# The composed config the study was made with (`effective_settings`): what its fixed overrides resolved to.
CONFIG_USER_ATTR = "wrncifar_effective_config"
# Config keys whose overrides leave the value a trial reports unchanged.
LABELS_AND_OUTPUTS = frozenset({"tags", "logger", "paths", "extras"})
NOT_IN_CONFIG = "(not in the config)"
SEARCHED = "(searched)"


class StudySettingsError(ValueError):
    """The stored study was made with other fixed overrides than this command's."""


def fixed_overrides(arguments: Sequence[str]) -> dict[str, str]:
    """The command line's overrides that every trial of the study shares (key → value as typed, the last one of
    a key winning, as in Hydra), without those of labels and outputs."""
    kept = {}
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        root = override.key_or_group.split(".")[0].split("/")[0]
        if not override.is_sweep_override() and root not in LABELS_AND_OUTPUTS:
            kept[override.get_key_element()] = override.get_value_element_as_str()
    return dict(sorted(kept.items()))


def effective_settings(config: DictConfig, arguments: Sequence[str]) -> dict[str, Any]:
    """What the sweep's composed config (with its `hydra` node) and command line `arguments` set, as the study
    keeps it: each config group's chosen option, every value resolved (except labels and outputs), and the keys
    searched (`hydra.sweeper.params` and search ranges on the command line, unless also given a fixed value, which
    the sweeper then keeps). A value only a job can resolve (its output folder) is kept as written."""
    choices = OmegaConf.to_container(config.hydra.runtime.choices) if "hydra" in config else {}
    values = {str(k): _resolved(config, k) for k in config if k != "hydra" and k not in LABELS_AND_OUTPUTS}
    overrides = OverridesParser.create().parse_overrides(list(arguments))
    searched = {str(k) for k in OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}}
    searched |= {o.get_key_element() for o in overrides if o.is_sweep_override()}
    searched -= {o.get_key_element() for o in overrides if not o.is_sweep_override()}
    settings = {"choices": choices, "config": values, "searched": sorted(searched)}
    return json.loads(json.dumps(settings, default=str))


def _resolved(parent: Any, key: Any) -> Any:
    try:
        node = parent[key]
    except Exception:  # noqa: BLE001 - an interpolation only a job can resolve: compared as written
        return OmegaConf.to_container(parent, resolve=False)[key]
    if not OmegaConf.is_config(node):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True)
    except Exception:  # noqa: BLE001 - resolve the rest of it, value by value
        keys = range(len(node)) if OmegaConf.is_list(node) else node.keys()
        resolved = [(k, _resolved(node, k)) for k in keys]
        return [v for _, v in resolved] if OmegaConf.is_list(node) else dict(resolved)


def effective_value(settings: dict[str, Any], key: str) -> str:
    """What an override of `key` (as `fixed_overrides` names it) set in `settings`: the option of a config group,
    else the value at that key (JSON), or NOT_IN_CONFIG; SEARCHED for a key the study searches."""
    if key in settings["searched"]:
        return SEARCHED
    name = key.lstrip("+~").split("@")[0]
    if name in settings["choices"]:
        return str(settings["choices"][name])
    node = settings["config"]
    for part in name.replace("/", ".").split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return NOT_IN_CONFIG
    return json.dumps(node, sort_keys=True)


def modelled_trials(study: Any) -> list[Any]:
    """The trials of `study` a sampler models new ones on: completed and pruned, and those still running or waiting,
    which may complete."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL]


def check_study_settings(
    storage: str, study_name: str, directions: list[str], arguments: Sequence[str], config: DictConfig
) -> None:
    """Record this command's fixed overrides and composed `config` in the study (creating it), or refuse them if
    they set a value other than the study's; a study whose every trial failed takes them instead (its sampler
    ignores failed trials).

    Raises:
        StudySettingsError: the stored study was made with other settings, or in the other direction.
    """
    import optuna

    try:
        study = optuna.create_study(storage=storage, study_name=study_name, directions=directions, load_if_exists=True)
    except ValueError as err:  # Optuna's "Cannot overwrite study direction from [MINIMIZE] to [MAXIMIZE]"
        stored = optuna.load_study(storage=storage, study_name=study_name).directions
        made = ", ".join(d.name.lower() for d in stored)
        raise StudySettingsError(
            f"Optuna study '{study_name}' in {storage} was made to {made} ({err}): give "
            f"hydra.sweeper.direction={made} to continue it, or start another study with "
            "hydra.sweeper.study_name=<new name>"
        ) from err
    settings = fixed_overrides(arguments)
    effective = effective_settings(config, arguments)
    recorded = study.user_attrs.get(USER_ATTR)
    recorded_effective = study.user_attrs.get(CONFIG_USER_ATTR)
    if recorded is None:
        if study.trials:
            log.info("Study %s has no recorded settings (made by an earlier version): recording these", study_name)
        study.set_user_attr(USER_ATTR, settings)
        study.set_user_attr(CONFIG_USER_ATTR, effective)
        return
    differences = []
    for key in sorted(recorded.keys() | settings.keys()):
        then, now = recorded.get(key, "(not given)"), settings.get(key, "(not given)")
        if recorded_effective is None:  # recorded by an earlier version: the overrides as typed are compared
            if then != now:
                differences.append(f"{key}: {then} then, {now} now")
            continue
        then_value, now_value = effective_value(recorded_effective, key), effective_value(effective, key)
        if then_value != now_value:
            then, now = (then, now) if then != now else (then_value, now_value)
            differences.append(f"{key}: {then} then, {now} now")
    if differences and not modelled_trials(study):
        # Samplers model new trials on completed and pruned ones only (and on running ones once they end).
        log.info(
            "Study %s holds no completed trial (%d failed): continued with this command's settings (%s)",
            study_name,
            len(study.trials),
            ", ".join(differences),
        )
        study.set_user_attr(USER_ATTR, settings)
        study.set_user_attr(CONFIG_USER_ATTR, effective)
        return
    if differences:
        raise StudySettingsError(
            f"Optuna study '{study_name}' in {storage} holds {len(study.trials)} trial(s) run with other settings "
            f"({', '.join(differences)}), and its sampler would model new trials on them: give the study's settings "
            "again to continue it, or start another study with hydra.sweeper.study_name=<new name>"
        )
    if recorded_effective is None:  # the same overrides: the study keeps what they compose to from now on
        study.set_user_attr(CONFIG_USER_ATTR, effective)
