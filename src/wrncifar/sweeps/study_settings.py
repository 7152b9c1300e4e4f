"""What a stored Optuna study optimises, kept with it, so that a later command does not continue it with different
settings.

`hparams_search=wrn_cifar100_optuna` continues its stored study when run again: the sampler then models the new
trials on the old ones. Trials run with another dataset, model, epoch count or metric would make that model (and
the study's best trial) meaningless without any sign of it. So the study records the command line's fixed
overrides (those that are not a search range) when it is created, and a command whose fixed overrides differ is
refused, naming the differences, before any trial runs. Overrides that change where results go or how they are
labelled (tags, loggers, paths, extras) may differ.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser

log = logging.getLogger(__name__)

USER_ATTR = "wrncifar_fixed_overrides"
# Config keys whose overrides leave the value a trial reports unchanged.
LABELS_AND_OUTPUTS = frozenset({"tags", "logger", "paths", "extras"})


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


def check_study_settings(storage: str, study_name: str, directions: list[str], arguments: Sequence[str]) -> None:
    """Record this command's fixed overrides in the study (creating it), or refuse them if the study recorded others.

    Raises:
        StudySettingsError: the stored study was made with other fixed overrides, or in the other direction.
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
    recorded = study.user_attrs.get(USER_ATTR)
    if recorded is None:
        if study.trials:
            log.info("Study %s has no recorded settings (made by an earlier version): recording these", study_name)
        study.set_user_attr(USER_ATTR, settings)
        return
    if recorded == settings:
        return
    differences = ", ".join(
        f"{key}: {recorded.get(key, '(not given)')} then, {settings.get(key, '(not given)')} now"
        for key in sorted(recorded.keys() | settings.keys())
        if recorded.get(key) != settings.get(key)
    )
    raise StudySettingsError(
        f"Optuna study '{study_name}' in {storage} holds {len(study.trials)} trial(s) run with other settings "
        f"({differences}), and its sampler would model new trials on them: give the study's settings again to "
        "continue it, or start another study with hydra.sweeper.study_name=<new name>"
    )
