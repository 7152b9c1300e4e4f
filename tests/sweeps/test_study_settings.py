"""A stored Optuna study keeps the fixed overrides it was made with and refuses to be continued with others."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from wrncifar.sweeps.study_settings import USER_ATTR, StudySettingsError, check_study_settings, fixed_overrides

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


def test_a_new_study_records_its_settings_and_the_same_command_continues_it(tmp_path: Path) -> None:
    storage, name = stored_study(tmp_path)
    check_study_settings(storage, name, ["maximize"], SEARCH)
    study = optuna.load_study(study_name=name, storage=storage)
    assert study.user_attrs[USER_ATTR] == fixed_overrides(SEARCH)
    study.add_trial(optuna.trial.create_trial(value=0.5))
    check_study_settings(storage, name, ["maximize"], [*SEARCH, "tags=[again]", "logger=csv"])
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
    ],
)
def test_a_study_is_not_continued_with_other_settings(tmp_path: Path, changed: list[str], difference: str) -> None:
    storage, name = stored_study(tmp_path)
    check_study_settings(storage, name, ["maximize"], SEARCH)
    optuna.load_study(study_name=name, storage=storage).add_trial(optuna.trial.create_trial(value=0.5))
    with pytest.raises(StudySettingsError) as err:
        check_study_settings(storage, name, ["maximize"], changed)
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
    check_study_settings(storage, name, ["maximize"], SEARCH)
    assert optuna.load_study(study_name=name, storage=storage).user_attrs[USER_ATTR] == fixed_overrides(SEARCH)
