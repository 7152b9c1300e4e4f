"""What predict.py and export.py take from a checkpoint and its data config: the class names, the image size and
normalisation, the device and where outputs go."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningDataModule

from tests.conftest import SHARED_CIFAR100
from wrncifar.data.cifar10 import CIFAR10DataModule
from wrncifar.data.cifar100 import CIFAR100DataModule
from wrncifar.data.cifar100_sources import DatasetNotFoundError
from wrncifar.data.cifar_classes import CIFAR100_CLASSES
from wrncifar.data.synthetic import SyntheticCIFAR100DataModule
from wrncifar.data.transforms import CIFAR100_MEAN, CIFAR100_STD
from wrncifar.models.wideresnet import WideResNet
from wrncifar.run.checkpoint_network import class_names, image_settings, output_file, pick_device
from wrncifar.run.config_validation import ConfigError
from wrncifar.run.entry import run
from wrncifar.run.export import export_model
from wrncifar.run.prediction import predict_images


def test_a_cifar_checkpoint_names_its_classes_without_the_dataset(tmp_path: Path) -> None:
    dm = CIFAR100DataModule(data_dir=str(tmp_path / "nothing_here"), download=False)
    names = class_names(dm, WideResNet(widths=[8, 16, 32, 64]))
    assert names == CIFAR100_CLASSES and len(set(names)) == 100
    assert (names[0], names[99]) == ("apple", "worm")
    dm = CIFAR10DataModule(data_dir=str(tmp_path / "nothing_here"), download=False)
    assert class_names(dm, WideResNet(num_classes=10, widths=[8, 16, 32, 64]))[:3] == ("airplane", "automobile", "bird")
    assert not (tmp_path / "nothing_here").exists(), "no data was looked for"


@pytest.mark.skipif(not SHARED_CIFAR100.is_dir(), reason=f"real CIFAR-100 arrays not staged at {SHARED_CIFAR100}")
def test_the_cifar100_names_are_the_datasets_own_in_label_order() -> None:
    meta = json.loads((SHARED_CIFAR100 / "meta.json").read_text())
    assert list(CIFAR100_CLASSES) == meta["fine_label_names"]


def test_other_data_modules_name_the_classes_their_arrays_name() -> None:
    dm = SyntheticCIFAR100DataModule(num_classes=10, train_per_class=2, val_per_class=1, test_per_class=1)
    assert class_names(dm, WideResNet(num_classes=10, widths=[8, 16, 32, 64])) == tuple(
        f"class_{i:03d}" for i in range(10)
    )


def test_names_that_cannot_be_read_or_do_not_fit_become_numbers(caplog: pytest.LogCaptureFixture) -> None:
    class Elsewhere(CIFAR100DataModule):
        def load_arrays(self):
            raise DatasetNotFoundError("my data is on another machine")

    net = WideResNet(num_classes=4, widths=[8, 16, 32, 64])
    with caplog.at_level(logging.WARNING):
        assert class_names(Elsewhere(), net) == ("class_0", "class_1", "class_2", "class_3")
    assert "Class names unavailable (my data is on another machine)" in caplog.text
    # CIFAR-100's names do not fit a network with 4 outputs.
    assert class_names(CIFAR100DataModule(), net) == ("class_0", "class_1", "class_2", "class_3")


def test_the_image_settings_are_the_data_modules_eval_transform() -> None:
    settings = image_settings(CIFAR100DataModule())
    assert settings.size == 32
    assert settings.mean == pytest.approx(CIFAR100_MEAN) and settings.std == pytest.approx(CIFAR100_STD)


def test_a_data_module_that_does_not_say_how_it_normalises_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"LightningDataModule has no evaluation transform with a v2\.Normalize"):
        image_settings(LightningDataModule())


def test_devices() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert pick_device("auto").type == expected
    with pytest.raises(ConfigError, match=r"device=cuda:99, but torch .* sees no such CUDA GPU: use device=cpu"):
        pick_device("cuda:99")
    with pytest.raises(ConfigError, match="device=gpu0: not a device name"):
        pick_device("gpu0")


def never(path: Path) -> bool:
    """A command that recognises no file as its own earlier output."""
    return False


def test_outputs_go_to_the_run_folder_a_given_folder_or_a_given_file(tmp_path: Path) -> None:
    run_folder, folder = tmp_path / "run", tmp_path / "mine"
    folder.mkdir()
    assert output_file(None, run_folder, "x.csv", never) == run_folder / "x.csv"
    assert output_file(str(folder), run_folder, "x.csv", never) == folder / "x.csv"
    target = tmp_path / "new" / "deeper" / "out.csv"
    assert output_file(str(target), run_folder, "x.csv", never) == target and target.parent.is_dir()


def test_a_path_ending_in_a_slash_is_a_folder_even_before_it_exists(tmp_path: Path) -> None:
    """`output=results/` must not become a file named `results` (which the next command would then overwrite)."""
    for given, folder in [(f"{tmp_path / 'new'}/", tmp_path / "new"), (f"{tmp_path / 'a' / 'b'}/.", tmp_path / "a/b")]:
        assert output_file(given, tmp_path / "run", "x.csv", never) == folder / "x.csv"
        assert folder.is_dir()
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ConfigError, match=r"output=.*file/ names a folder, but .*file is a file"):
        output_file(f"{tmp_path / 'file'}/", tmp_path / "run", "x.csv", never)
    with pytest.raises(ConfigError, match=r"the folder .*file cannot be made"):
        output_file(str(tmp_path / "file" / "x.csv"), tmp_path / "run", "x.csv", never)
    assert (tmp_path / "file").read_text() == "mine"


def test_a_file_already_there_is_replaced_only_when_it_is_the_commands_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mine, earlier = tmp_path / "model.pt", tmp_path / "earlier.csv"
    mine.write_bytes(b"someone's weights")
    earlier.write_text("written before")
    with pytest.raises(ConfigError, match=r"output: .*model\.pt already exists and is not an earlier output"):
        output_file(str(mine), tmp_path / "run", "x.csv", never)
    (tmp_path / "x.csv").mkdir()  # a folder where the file would go
    with pytest.raises(ConfigError, match=r"output: .*x\.csv already exists"):
        output_file(str(tmp_path), tmp_path / "run", "x.csv", lambda path: True)
    assert mine.read_bytes() == b"someone's weights"
    with caplog.at_level(logging.INFO):
        assert output_file(str(earlier), tmp_path / "run", "x.csv", lambda path: path == earlier) == earlier
    assert f"Replacing {earlier}, written by an earlier run of this command" in caplog.text


@pytest.mark.parametrize(
    ("task", "config_name", "args"),
    [(predict_images, "predict.yaml", ["input=x.png"]), (export_model, "export.yaml", [])],
    ids=["predict", "export"],
)
def test_a_run_folder_given_as_ckpt_path_names_its_checkpoints_with_exit_1(
    trained_run: Path, make_config, task, config_name: str, args: list[str]
) -> None:
    """eval.py's message (`check_checkpoint_path`; train.py's without its resume=), before anything is built."""
    with pytest.raises(SystemExit) as exit_info:
        run(task, make_config([f"ckpt_path={trained_run}", *args], config_name))
    message = str(exit_info.value.__cause__)
    assert exit_info.value.code == 1
    assert (
        f"checkpoint {trained_run} is a folder, not a checkpoint file: pass the path of a .ckpt file in "
        f"{trained_run / 'checkpoints'} ("
    ) in message
    assert "last.ckpt" in message and "resume=" not in message
