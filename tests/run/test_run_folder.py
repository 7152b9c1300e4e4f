"""A run or sweep folder that cannot be written: one message and exit 1 before anything starts, tested on a real
read-only file system and a real folder without write permission (user namespaces: no root needed)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FEW_IMAGES, HANG_TIMEOUT_S, ROOT, run_entry
from wrncifar.run.run_folder import remove_if_nothing_ran

TINY = ["model=wrn_tiny", "data=synthetic", "trainer.max_epochs=1", "extras.print_config=false"]


def _in_namespace(shell: str, *options: str) -> subprocess.CompletedProcess:
    """Run `shell` in new user and mount namespaces (`unshare`): mounts and permissions without being root."""
    probe = subprocess.run(["unshare", *options, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"this kernel does not allow user namespaces (unshare {' '.join(options)}): {probe.stderr}")
    return subprocess.run(
        ["unshare", *options, "sh", "-c", shell], cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT_S
    )


def _train_command(*args: str, multirun: bool = False) -> str:
    return shlex.join([sys.executable, str(ROOT / "src" / "train.py"), *(["-m"] if multirun else []), *TINY, *args])


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "sweep"])
def test_a_run_folder_on_a_read_only_file_system_is_refused_with_one_message(tmp_path: Path, multirun: bool) -> None:
    mount = tmp_path / "read_only"
    mount.mkdir()
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    command = _train_command(f"{key}={mount / 'logs' / 'run'}", multirun=multirun)
    result = _in_namespace(f"mount -t tmpfs -o ro tmpfs {shlex.quote(str(mount))} && {command}", "-rm")
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"Error: {key}={mount / 'logs' / 'run'} cannot be created: {mount} is on a read-only file system" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr + result.stdout


def test_a_run_folder_without_write_permission_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    # A user namespace without a uid mapping: the same user, without the power to override file permissions.
    result = _in_namespace(_train_command(f"hydra.run.dir={locked / 'run'}"), "-U")
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"cannot be created: {locked} is not writable by this user" in result.stderr
    assert not (locked / "run").exists()


def test_a_file_in_the_way_of_the_run_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file")
    result = run_entry("train.py", [*TINY, f"hydra.run.dir={tmp_path / 'taken' / 'run'}"])
    assert result.returncode == 1
    assert f"cannot be created: {tmp_path / 'taken'} is a file, not a folder" in result.stderr
    assert (tmp_path / "taken").read_text() == "a file"


@pytest.mark.parametrize(
    "mistake",
    [["data.data_dir={tmp}/mistyped/cifar", "data.download=false"], ["data=synthetic", "data.batch_size=0"]],
    ids=["missing data", "bad value"],
)
def test_a_run_that_stops_before_training_leaves_no_folder(tmp_path: Path, mistake: list[str]) -> None:
    run_dir = tmp_path / "run"
    args = ["model=wrn_tiny", *(m.format(tmp=tmp_path) for m in mistake), f"hydra.run.dir={run_dir}"]
    result = run_entry("train.py", args)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"Nothing ran: the run folder {run_dir} (its configs and this log) was removed" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the run folder nor the mistyped data folder


def test_a_folder_with_anything_else_in_it_is_kept(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    (folder / ".hydra").mkdir(parents=True)
    for name in (".hydra/config.yaml", "train.log", ".run.lock"):
        (folder / name).write_text("")
    (folder / "notes.txt").write_text("the user's own notes")
    assert not remove_if_nothing_ran(folder, "train.log")
    assert (folder / "notes.txt").read_text() == "the user's own notes"
    (folder / "notes.txt").unlink()
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"a resumed run's state")
    assert not remove_if_nothing_ran(folder, "train.log")
    (folder / "checkpoints" / "last.ckpt").unlink()
    assert remove_if_nothing_ran(folder, "train.log") and not folder.exists()


@pytest.mark.slow
def test_a_new_run_in_a_folder_that_holds_a_run_is_refused_and_the_run_kept(trained_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    again = run_entry("train.py", [*FEW_IMAGES, "trainer.max_epochs=1", "seed=2", f"hydra.run.dir={run_dir}"])
    assert again.returncode == 1
    assert f"Error: hydra.run.dir={run_dir} already holds a run (" in again.stderr
    assert f"continue it with resume={run_dir}" in again.stderr and "Traceback" not in again.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before, "nothing of the run changed"
    # torchrun --max-restarts starts a refused command again: its restart is no more its own run's than it was.
    restarted = {"TORCHELASTIC_RUN_ID": "4e1d", "TORCHELASTIC_RESTART_COUNT": "1", "TORCHELASTIC_MAX_RESTARTS": "3"}
    again = run_entry("train.py", [*FEW_IMAGES, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"], env=restarted)
    assert again.returncode == 1 and f"Error: hydra.run.dir={run_dir} already holds a run (" in again.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before, "nothing of the run changed"


@pytest.mark.slow
def test_a_new_sweep_in_a_folder_that_holds_a_sweep_is_refused(sweep_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    shutil.copytree(sweep_dir, folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    again = run_entry("train.py", ["-m", *FEW_IMAGES, "trainer.max_epochs=1", "seed=3", f"hydra.sweep.dir={folder}"])
    assert again.returncode == 1
    assert f"Error: hydra.sweep.dir={folder} already holds a sweep (2 job folders with outputs" in again.stderr
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before, "nothing of the sweep changed"
