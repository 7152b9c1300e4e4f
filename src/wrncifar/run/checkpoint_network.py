"""Where `predict.py` and `export.py` start: the network a checkpoint holds, what its data config says about the
images it takes, and the paths the command line gives them.

The model and data configs are the training run's, adopted exactly as `eval.py` adopts them (`model.net.*` and
`data.*` overrides on top; a checkpoint outside a run folder takes this config's, e.g. the seed's own state_dict
with `model.net.pooling=seed`). The weights are loaded with `weights_only=True`, every tensor matched by name and
shape.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch import LightningDataModule, LightningModule
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn
from torchvision.transforms import v2

from wrncifar.data.cifar100 import CIFAR100DataModule
from wrncifar.data.cifar100_sources import CorruptDatasetError, DatasetNotFoundError
from wrncifar.data.cifar_classes import CLASSES_BY_RELEASE
from wrncifar.data.transforms import IMAGE_SIZE
from wrncifar.run.checkpoints import (
    check_checkpoint_path,
    check_compatible,
    is_lightning_checkpoint,
    load_network_weights,
    read_checkpoint_file,
)
from wrncifar.run.config_validation import ConfigError, check_num_classes, validate_config
from wrncifar.run.console import quiet_console
from wrncifar.run.evaluation import adopt_training_run_config
from wrncifar.run.extras import apply_extras

log = logging.getLogger(__name__)

# Training speed switches, which a config may leave at `auto`. Predicting and exporting build the network and read
# the data module's settings only: nothing is trained, compiled (an exporter needs the eager module) or batched on a
# device, so they are off.
SPEED_SETTINGS = ("model.compile", "model.channels_last", "data.on_device", "data.drop_last")


@dataclass(frozen=True)
class ImageSettings:
    """What the network expects of an image: `size`×`size` RGB, normalised per channel with `mean` and `std` (on
    the 0–1 scale) after scaling to 0–1."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class CheckpointNetwork:
    """A checkpoint's network (eval mode, CPU), its image settings, its class names, and the resolved `model.net`
    config that builds it."""

    net: nn.Module
    images: ImageSettings
    classes: tuple[str, ...]
    net_config: dict[str, Any]
    ckpt_path: Path


def required_path(cfg: DictConfig, key: str, what: str, example: str) -> Path:
    """`cfg[key]` as a path relative to the folder the command ran in; ConfigError when it is unset."""
    given = OmegaConf.select(cfg, key, throw_on_missing=False)
    if not given:
        raise ConfigError(f"{key} is required ({what}): {example}")
    return launch_path(str(given))


def launch_path(given: str) -> Path:
    """`given` read from the folder the command was run in (also with `hydra.job.chdir=true`)."""
    path = Path(given).expanduser()
    if path.is_absolute() or not HydraConfig.initialized():
        return path
    return Path(HydraConfig.get().runtime.cwd) / path


def output_file(given: str | None, run_folder: Path, name: str, replaceable: Callable[[Path], bool]) -> Path:
    """Where a command's output file goes: `given`, else `run_folder / name`. A `given` folder (one that exists, or
    any path ending in `/`, which is made) gets `name` inside it; missing parent folders are made.

    ConfigError for a `given` folder that is a file, and (`refuse_to_replace`) for a file already there that
    `replaceable` does not recognise as this command's own earlier output."""
    if not given:
        return run_folder / name
    path = launch_path(given)
    # Path() drops a trailing slash, so `output=new_folder/` is read here, before it is lost.
    if path.is_dir() or os.path.basename(given) in ("", ".", ".."):
        if path.exists() and not path.is_dir():
            raise ConfigError(f"output={given} names a folder, but {path} is a file: give a folder, or a file name")
        path = path / name
    refuse_to_replace(path, replaceable)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"output={given}: the folder {path.parent} cannot be made ({err.strerror})") from err
    return path


def refuse_to_replace(path: Path, replaceable: Callable[[Path], bool]) -> None:
    """ConfigError when `path` exists and `replaceable(path)` does not recognise it as an earlier output of the
    same command: a file of the user's own (an exported model, a checkpoint, a photo) is never silently replaced.
    An earlier output is replaced, and the log says so, so that a command can be run again as it was typed."""
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_file() and not path.is_symlink() and replaceable(path):
        log.info("Replacing %s, written by an earlier run of this command", path)
        return
    raise ConfigError(
        f"output: {path} already exists and is not an earlier output of this command, so it was left as it is: "
        "remove it, or give another file or folder with output=…"
    )


def load_checkpoint_network(cfg: DictConfig, settings: Mapping[str, Any], example: str) -> CheckpointNetwork:
    """Adopt the training run's `model` and `data` configs for `cfg.ckpt_path`, check the config (with the entry
    point's own top-level `settings`: key → type), build the network and load the checkpoint's weights into it.

    ConfigError when ckpt_path is not given, CheckpointError when it is not a file (`check_checkpoint_path`: what it
    is instead) or its weights do not fit the network.
    """
    ckpt_path = required_path(cfg, "ckpt_path", "the checkpoint to load", example)
    check_checkpoint_path(ckpt_path, training=False)
    adopt_training_run_config(cfg, ckpt_path)
    switch_off_speed_settings(cfg)
    validate_config(cfg, settings)
    quiet_console(evaluation=True)
    apply_extras(cfg)  # the config tree is printed once it is known to be valid: an error comes first
    datamodule: LightningDataModule = instantiate(cfg.data)
    model: LightningModule = instantiate(cfg.model)
    check_num_classes(model, datamodule)
    checkpoint = read_checkpoint_file(ckpt_path)
    if is_lightning_checkpoint(checkpoint):  # its state_dict is the model's (the EMA average when there is one)
        check_compatible(model, checkpoint, ckpt_path)
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    else:  # plain network weights: the seed's own code, a plain PyTorch loop
        load_network_weights(model.net, ckpt_path)
    net = model.net
    net_config: dict[str, Any] = OmegaConf.to_container(cfg.model.net, resolve=True)  # type: ignore[assignment]
    return CheckpointNetwork(
        net.eval(), image_settings(datamodule), class_names(datamodule, net), net_config, ckpt_path.resolve()
    )


def switch_off_speed_settings(cfg: DictConfig) -> None:
    """Set the `SPEED_SETTINGS` that `cfg` has to false."""
    with open_dict(cfg):
        for key in SPEED_SETTINGS:
            if OmegaConf.select(cfg, key, default=None) is not None:
                OmegaConf.update(cfg, key, False, merge=False)


def image_settings(datamodule: LightningDataModule) -> ImageSettings:
    """The image size and normalisation of `datamodule`'s evaluation transform (`eval_tf`); ConfigError for a
    data module that does not say (a module of your own: give it an `eval_tf` ending in `v2.Normalize`)."""
    transform = getattr(datamodule, "eval_tf", None)
    steps = transform.transforms if isinstance(transform, v2.Compose) else [transform]
    normalize = next((s for s in steps if isinstance(s, v2.Normalize)), None)
    if normalize is None:
        raise ConfigError(
            f"{type(datamodule).__name__} has no evaluation transform with a v2.Normalize (eval_tf): the images' "
            "normalisation cannot be known"
        )
    size = int(getattr(datamodule, "image_size", IMAGE_SIZE))
    return ImageSettings(size, tuple(float(m) for m in normalize.mean), tuple(float(s) for s in normalize.std))


def class_names(datamodule: LightningDataModule, net: nn.Module) -> tuple[str, ...]:
    """The names of the network's outputs: a CIFAR release's own (no data needed) for a data module that reads one,
    else the data module's arrays' (`load_arrays().classes`, e.g. the synthetic set's); `class_<i>` with a warning
    when they cannot be read or do not match the outputs."""
    count = int(getattr(net, "num_classes", 0) or getattr(datamodule, "num_classes", 0))
    names: tuple[str, ...] = ()
    release = getattr(datamodule, "release", None)
    if type(datamodule).load_arrays is CIFAR100DataModule.load_arrays and release is not None:
        names = CLASSES_BY_RELEASE.get(release.slug, ())
    if not names and hasattr(datamodule, "load_arrays"):
        try:
            names = tuple(datamodule.load_arrays().classes)
        except (DatasetNotFoundError, CorruptDatasetError, OSError) as err:
            log.warning("Class names unavailable (%s): the outputs are named class_<i>", err)
    if len(names) != count:
        if names:
            log.warning("The data names %d classes, the network has %d outputs: named class_<i>", len(names), count)
        names = tuple(f"class_{i}" for i in range(count))
    return names


def pick_device(name: str) -> torch.device:
    """`auto`: the CUDA GPU when there is one, else Apple's GPU, else the CPU; otherwise the device named
    (`cpu`, `cuda`, `cuda:1`, `mps`), ConfigError when this machine has no such device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device={name}: not a device name (auto, cpu, cuda, cuda:1, mps)") from err
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"device={name}, but torch {torch.__version__} sees no such CUDA GPU: use device=cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name}, but this machine has no Apple GPU torch can use: use device=cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={name}: use auto, cpu, cuda, cuda:<n> or mps")
    return device
