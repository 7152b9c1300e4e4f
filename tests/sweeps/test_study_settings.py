"""A stored Optuna study keeps the fixed overrides it was made with and refuses to be continued with others."""

from __future__ import annotations

import functools
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from tests.conftest import CONFIGS
from wrncifar.sweeps.study_settings import (
    CONFIG_USER_ATTR,
    USER_ATTR,
    StudySettingsError,
    check_study_settings,
    fixed_overrides,
)

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # add_trial

SEARCH = ["hparams_search=wrn_cifar100_optuna", "trainer=gpu", "trainer.max_epochs=30"]


def test_the_fixed_overrides_leave_out_search_ranges_labels_and_outputs() -> None:
    arguments = [
        *SEARCH,
        "model.optimizer.lr=interval(0.01,0.1)",  # a search range: each trial draws its own
        "data.batch_size=choice(64,128)",
        "tags=[a,b]",
        "logger=wandb",
        "logger.wandb.project=p",
        "paths.data_dir=/data",
        "extras.print_config=false",
        "trainer.max_epochs=40",  # given twice: the last one counts, as in Hydra
    ]
    assert fixed_overrides(arguments) == {
        "hparams_search": "wrn_cifar100_optuna",
        "trainer": "gpu",
        "trainer.max_epochs": "40",
    }


def stored_study(tmp_path: Path) -> tuple[str, str]:
    return f"sqlite:///{tmp_path / 'study.db'}", "search"


@functools.cache
def composed(arguments: tuple[str, ...]) -> DictConfig:
    """The config a sweep composes from `arguments` (fixed overrides only), with its `hydra` node."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train.yaml", overrides=list(arguments), return_hydra_config=True)


def check(storage: str, name: str, arguments: list[str]) -> None:
    """`check_study_settings` as the sweeper calls it: with the command line and the config it composed."""
    check_study_settings(storage, name, ["maximize"], arguments, composed(tuple(arguments)))


def test_a_new_study_records_its_settings_and_the_same_command_continues_it(tmp_path: Path) -> None:
    storage, name = stored_study(tmp_path)
    check(storage, name, SEARCH)
    study = optuna.load_study(study_name=name, storage=storage)
    assert study.user_attrs[USER_ATTR] == fixed_overrides(SEARCH)
    study.add_trial(optuna.trial.create_trial(value=0.5))
    check(storage, name, [*SEARCH, "tags=[again]", "logger=csv"])
    assert len(optuna.load_study(study_name=name, storage=storage).trials) == 1


@pytest.mark.parametrize(
    ("changed", "difference"),
    [
        (
            ["hparams_search=wrn_cifar100_optuna", "trainer=gpu", "trainer.max_epochs=50"],
            "trainer.max_epochs: 30 then, 50 now",
        ),
        ([*SEARCH, "data=cifar10"], "data: (not given) then, cifar10 now"),
        (SEARCH[:2], "trainer.max_epochs: 30 then, (not given) now"),
        # The study searched the learning rate; a fixed one (the config's own value) would end that search.
        ([*SEARCH, "model.optimizer.lr=0.1"], "model.optimizer.lr: (not given) then, 0.1 now"),
    ],
)
def test_a_study_is_not_continued_with_other_settings(tmp_path: Path, changed: list[str], difference: str) -> None:
    storage, name = stored_study(tmp_path)
    check(storage, name, SEARCH)
    optuna.load_study(study_name=name, storage=storage).add_trial(optuna.trial.create_trial(value=0.5))
    with pytest.raises(StudySettingsError) as err:
        check(storage, name, changed)
    assert str(err.value) == (
        f"Optuna study 'search' in {storage} holds 1 trial(s) run with other settings ({difference}), and its sampler "
        "would model new trials on them: give the study's settings again to continue it, or start another study "
        "with hydra.sweeper.study_name=<new name>"
    )
    assert optuna.load_study(study_name=name, storage=storage).user_attrs[USER_ATTR] == fixed_overrides(SEARCH)


def test_a_study_stored_before_settings_were_recorded_takes_the_next_commands(tmp_path: Path) -> None:
    storage, name = stored_study(tmp_path)
    optuna.create_study(storage=storage, study_name=name, direction="maximize").add_trial(
        optuna.trial.create_trial(value=0.5)
    )
    check(storage, name, SEARCH)
    assert optuna.load_study(study_name=name, storage=storage).user_attrs[USER_ATTR] == fixed_overrides(SEARCH)


def test_a_study_is_continued_when_its_values_are_given_again_by_name(tmp_path: Path) -> None:
    """Given or not, the default seed (42) and data option (cifar100) are the values the study's trials ran with."""
    storage, name = stored_study(tmp_path)
    check(storage, name, SEARCH)
    optuna.load_study(study_name=name, storage=storage).add_trial(optuna.trial.create_trial(value=0.5))
    check(storage, name, [*SEARCH, "seed=42", "data=cifar100"])
    with pytest.raises(StudySettingsError, match=r"other settings \(seed: \(not given\) then, 7 now\)"):
        check(storage, name, [*SEARCH, "seed=7"])
    assert optuna.load_study(study_name=name, storage=storage).user_attrs[USER_ATTR] == fixed_overrides(SEARCH)


def test_a_study_recorded_with_its_overrides_only_compares_them_as_typed_then_records_its_config(
    tmp_path: Path,
) -> None:
    storage, name = stored_study(tmp_path)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    study.set_user_attr(USER_ATTR, fixed_overrides(SEARCH))  # what the earlier version recorded
    study.add_trial(optuna.trial.create_trial(value=0.5))
    with pytest.raises(StudySettingsError, match=r"seed: \(not given\) then, 42 now"):
        check(storage, name, [*SEARCH, "seed=42"])  # what it ran with is not known
    check(storage, name, SEARCH)
    assert optuna.load_study(study_name=name, storage=storage).user_attrs[CONFIG_USER_ATTR]["config"]["seed"] == 42
    check(storage, name, [*SEARCH, "seed=42"])
