"""Every global random generator in the checkpoint, so a resumed run draws what an uninterrupted one would."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader


class RNGStateCheckpoint(Callback):
    """Saves the torch, CUDA, numpy and Python generators with each checkpoint and restores them on resume, at the
    point where the uninterrupted run would next draw from them.

    With a torch DataLoader (loader workers: `data.on_device=false`, the policies), that is when the checkpoint is
    loaded: Lightning builds the training loader's iterator — which draws its shuffle and worker seeds — already
    while `configure_optimizers` counts the steps, before any later hook. With the on-device loader (the default),
    which draws from its own generator, it is just before the first step (set-up in between may draw). An epoch-end
    resume is then exact on both paths; a mid-epoch one on the on-device path, which also keeps its loader position
    (`DeviceBatches.state_dict`).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        states = _collect_rng_states(include_cuda=True)
        kind, keys, pos, has_gauss, cached = states["numpy"]
        # As plain lists: checkpoints load with weights_only=True, which refuses numpy arrays.
        states["numpy"] = [kind, keys.tolist(), pos, has_gauss, cached]
        return states

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = dict(state_dict)
        kind, keys, pos, has_gauss, cached = states["numpy"]
        states["numpy"] = (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
        cuda = states.pop("torch.cuda", None)
        if cuda and torch.cuda.is_available():
            # One state per GPU the saving process saw; a resume that sees fewer (2 GPUs, then 1) restores those
            # it has: setting a GPU that is not there fails. Without CUDA, or saved without: left alone.
            states["torch.cuda"] = list(cuda[: torch.cuda.device_count()])
        _set_rng_states(states)
        self._pending = states

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        states, self._pending = self._pending, None
        if states is not None and not isinstance(trainer.train_dataloader, DataLoader):
            _set_rng_states(states)  # the on-device loader: nothing has drawn for the training data yet
