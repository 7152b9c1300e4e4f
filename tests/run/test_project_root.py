"""The checkout's `.env`, loaded by both entry points before anything else: its variables reach the composed
config, and a variable already set in the environment wins over the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_entry
from wrncifar.run.project_root import project_environment


def write_dotenv(root: Path, text: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / ".env").write_text(text)


def test_the_root_is_the_checkout_of_the_entry_point_and_its_dotenv_is_read(tmp_path: Path, monkeypatch) -> None:
    for name in ("PROJECT_ROOT", "WRNCIFAR_DATA_DIR", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    write_dotenv(tmp_path, "WRNCIFAR_DATA_DIR=/datasets/cifar100\n# a comment\nexport WANDB_MODE='offline'\n")
    assert project_environment(tmp_path / "src" / "train.py") == {
        "PROJECT_ROOT": str(tmp_path),
        "WRNCIFAR_DATA_DIR": "/datasets/cifar100",
        "WANDB_MODE": "offline",
    }


def test_variables_already_set_win_over_the_dotenv_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PROJECT_ROOT", str(tmp_path / "root"))  # set by the user, or by a DDP process's parent
    monkeypatch.setenv("WANDB_API_KEY", "from-the-environment")
    monkeypatch.delenv("WRNCIFAR_DATA_DIR", raising=False)
    write_dotenv(tmp_path / "root", "WANDB_API_KEY=from-the-file\nWRNCIFAR_DATA_DIR=${PROJECT_ROOT}/datasets\n")
    assert project_environment("/elsewhere/src/train.py") == {"WRNCIFAR_DATA_DIR": f"{tmp_path / 'root'}/datasets"}


def test_without_a_dotenv_file_only_the_root_is_added(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("PROJECT_ROOT", raising=False)
    assert project_environment(tmp_path / "src" / "eval.py") == {"PROJECT_ROOT": str(tmp_path)}


@pytest.mark.slow
@pytest.mark.parametrize("set_in_the_environment", [False, True])
def test_the_dotenv_data_dir_reaches_the_run_unless_the_environment_sets_it(
    tmp_path: Path, monkeypatch, set_in_the_environment: bool
) -> None:
    # A checkout at tmp_path/root whose .env moves the data, as a user would: a run there looks for CIFAR-100 in
    # the folder the .env names, and says so when it is not there.
    root = tmp_path / "root"
    write_dotenv(root, f"WRNCIFAR_DATA_DIR={tmp_path / 'from_dotenv'}\n")
    monkeypatch.delenv("WRNCIFAR_DATA_DIR", raising=False)
    env = {"PROJECT_ROOT": str(root)}
    if set_in_the_environment:
        env["WRNCIFAR_DATA_DIR"] = str(tmp_path / "from_environment")
    args = ["model=wrn_tiny", "trainer=cpu", "data.download=false", "extras.print_config=false"]
    result = run_entry("train.py", [*args, f"hydra.run.dir={tmp_path / 'run'}"], env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    expected = tmp_path / ("from_environment" if set_in_the_environment else "from_dotenv")
    assert f"CIFAR-100 not found in {expected} " in output, output[-3000:]
