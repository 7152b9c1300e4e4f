"""A sweep refused before any job runs leaves no folder that its command made, and never touches another."""

from __future__ import annotations

from pathlib import Path

from wrncifar.sweeps.sweep_setup import MULTIRUN_YAML, new_folder, remove_unused_folders


def test_only_folders_this_command_made_and_nothing_wrote_to_are_removed(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    assert new_folder(existing) is None, "a folder there before the command is never the command's"
    assert new_folder(existing / "a" / "sweep") == existing / "a"

    refused, ran = tmp_path / "refused" / "sweep", tmp_path / "ran" / "sweep"
    for sweep_dir in (refused, ran):
        (sweep_dir / "0").mkdir(parents=True)
        (sweep_dir / MULTIRUN_YAML).write_text("hydra: {}\n")
    (ran / "0" / "train.log").write_text("a job wrote this\n")
    assert remove_unused_folders([tmp_path / "refused"], refused) == [tmp_path / "refused"]
    assert remove_unused_folders([tmp_path / "ran"], ran) == []
    assert not (tmp_path / "refused").exists() and (ran / "0" / "train.log").is_file()
